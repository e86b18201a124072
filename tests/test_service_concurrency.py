"""Concurrent requests batch together and give exactly what they give one at a time."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoints, test_settings

PROMPTS = ["To be", "ROMEO:", "a", "question", "window breaks", "T", "or not to be", "soft"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = make_checkpoints(tmp_path_factory.mktemp("ckpts"))
    with client_for(test_settings(root)) as c:
        yield c


def run(client: TestClient, model: str, prompt: str, **opts: object) -> list[dict]:
    r = client.post("/v1/generate", json={"model": model, "prompt": prompt, "max_new_tokens": 24,
                                          "stop_at_eos": False, **opts})
    assert r.status_code == 200, r.text
    return [{k: c[k] for k in ("text", "token_ids", "finish_reason")} for c in r.json()["choices"]]


def max_batch(client: TestClient, model: str) -> int:
    """The largest batch-size bucket with an observation (the histogram is cumulative)."""
    text = client.get("/metrics").text
    counts = {float(le): float(v) for le, v in re.findall(
        rf'lmforge_batch_size_bucket{{le="([0-9.]+)",model="{model}"}} ([0-9.e+]+)', text)}
    total = float(re.search(rf'lmforge_batch_size_count{{model="{model}"}} ([0-9.e+]+)', text).group(1))
    below = [le for le, v in sorted(counts.items()) if v < total]
    return int(max(below)) + 1 if below else 1


@pytest.mark.parametrize("model", ["tiny", "tiny-gru"])
def test_concurrent_greedy_equals_sequential(client: TestClient, model: str) -> None:
    sequential = [run(client, model, p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda p: run(client, model, p), PROMPTS))
    assert concurrent == sequential
    assert max_batch(client, model) > 1, "concurrent requests never shared a decode step"


def test_concurrent_mixed_strategies_equal_sequential(client: TestClient) -> None:
    jobs = [("To", {"strategy": "sample", "seed": 1, "temperature": 0.9}),
            ("be", {"strategy": "beam", "num_beams": 3, "num_return_sequences": 2}),
            ("or", {}),
            ("not", {"strategy": "sample", "seed": 2, "num_return_sequences": 2, "top_k": 5}),
            ("to", {"strategy": "beam", "num_beams": 2})]
    sequential = [run(client, "tiny", p, **o) for p, o in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(lambda j: run(client, "tiny", j[0], **j[1]), jobs))
    assert concurrent == sequential


def test_streams_and_plain_requests_together(client: TestClient) -> None:
    expected = run(client, "tiny", "ROMEO:")[0]["text"]

    def stream() -> str:
        r = client.post("/v1/generate/stream", json={"model": "tiny", "prompt": "ROMEO:", "max_new_tokens": 24,
                                                     "stop_at_eos": False})
        return "".join(
            json.loads(line[6:])["text"]
            for line in r.text.splitlines() if line.startswith("data: ") and '"token_id"' in line
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: stream() if i % 2 else run(client, "tiny", "ROMEO:")[0]["text"], range(6)))
    assert results == [expected] * 6
    assert client.app.state.registry.models["tiny"].scheduler.depth == 0


def test_the_readme_guarantee_seeded_and_greedy_alone_equal_among_fifteen_others(client: TestClient) -> None:
    """README: a seeded sample and a greedy request give identical text alone and batched with 15
    other requests of every strategy (unseeded samples, beams, penalties, bans, scoring)."""
    watched = [("ROMEO:", {"strategy": "sample", "seed": 7, "temperature": 0.9, "top_p": 0.9}),
               ("To be", {})]
    alone = [run(client, "tiny", p, **o) for p, o in watched]
    others = [
        ("a", {"strategy": "sample"}), ("b", {"strategy": "sample", "temperature": 1.5, "top_k": 3}),
        ("c", {"strategy": "beam", "num_beams": 4, "num_return_sequences": 2}),
        ("d", {"strategy": "beam", "num_beams": 2, "length_penalty": 0.5, "no_repeat_ngram_size": 2}),
        ("e", {"repetition_penalty": 1.3}), ("f", {"strategy": "sample", "min_p": 0.1, "seed": 3}),
        ("g", {"strategy": "sample", "num_return_sequences": 3}), ("h", {"no_repeat_ngram_size": 1}),
        ("i", {"stop": ["e"]}), ("j", {"strategy": "sample", "temperature": 0.01}),
        ("k", {"strategy": "beam", "num_beams": 3, "early_stopping": False}),
        ("l", {"strategy": "sample", "top_p": 0.5, "repetition_penalty": 0.8}),
        ("m", {"max_new_tokens": 3}), ("n", {"strategy": "sample", "seed": 9, "num_return_sequences": 2}),
    ]

    def job(i: int) -> object:
        if i < len(watched):
            return run(client, "tiny", watched[i][0], **watched[i][1])
        if i == len(watched) + len(others):
            r = client.post("/v1/perplexity", json={"model": "tiny", "texts": ["To be, or not to be"]})
            assert r.status_code == 200
            return None
        prompt, opts = others[i - len(watched)]
        return run(client, "tiny", prompt, **opts)

    n = len(watched) + len(others) + 1  # 2 watched + 15 others
    assert n - len(watched) == 15
    for _ in range(2):
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(job, range(n)))
        assert results[: len(watched)] == alone
    assert max_batch(client, "tiny") > 4, "the requests never shared a decode step"
