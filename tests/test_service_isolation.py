"""A failure stays inside the request that caused it, and what the answers say is true.

- Schema-valid but hostile parameters (a ban that empties the vocabulary, temperatures and
  penalties that underflow float32, length penalties that overflow a power) answer 200 with
  valid completions, and good requests decoding beside them get exactly what they get alone.
- Scoring runs on the model's worker: a request over the cost limit is a 422 naming the
  setting, a timeout is a 504 and stops the work, and the queue bound counts scoring too.
- Token texts: for char, word and bpe models, ``"".join(tokens) == text``, ``text_offset``
  indexes the text, and streamed logprobs equal the non-streamed ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from test_service_helpers import CORPUS, client_for, make_checkpoint, sse_events, test_settings

from lm.checkpoint import save_checkpoint
from lm.config import RNNConfig, TransformerConfig
from lm.models import build_model
from tokenizer import train_tokenizer


def make_kind_checkpoint(directory: Path, kind: str) -> Path:
    """A random tiny model over a ``word`` or ``bpe`` tokenizer trained on the test corpus."""
    corpus = directory.parent / f".{directory.name}-corpus.txt"
    corpus.write_text(CORPUS * 3 + "une fenêtre où l'été\n", encoding="utf-8")
    tok = train_tokenizer(kind, [corpus], 330 if kind == "bpe" else None)
    corpus.unlink()
    torch.manual_seed(3)
    if kind == "word":
        config: Any = RNNConfig(vocab_size=tok.vocab_size, cell="lstm", n_embd=16, n_hidden=16, n_layer=1)
    else:
        config = TransformerConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    return save_checkpoint(directory, build_model(config), tok)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    make_checkpoint(root / "tiny")
    make_kind_checkpoint(root / "word", "word")
    make_kind_checkpoint(root / "bpe", "bpe")
    return root


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    with client_for(test_settings(root, max_new_tokens=512, request_timeout_s=30.0)) as c:
        yield c


HOSTILE = [
    {"strategy": "sample", "temperature": 1e-39},
    {"strategy": "sample", "top_p": 1e-46},
    {"strategy": "sample", "repetition_penalty": 1e-50},
    {"strategy": "beam", "length_penalty": 2000},
    {"strategy": "beam", "length_penalty": 1e308},
    {"strategy": "beam", "length_penalty": -1e308},
    {"strategy": "greedy", "no_repeat_ngram_size": 1, "stop_at_eos": False, "max_new_tokens": 500},
    {"strategy": "sample", "no_repeat_ngram_size": 1, "stop_at_eos": False, "max_new_tokens": 500, "seed": 1},
    {"strategy": "beam", "no_repeat_ngram_size": 1, "stop_at_eos": False, "max_new_tokens": 500,
     "num_beams": 4, "num_return_sequences": 4},
]


def generate(client: TestClient, **body: Any) -> dict:
    r = client.post("/v1/generate", json={"model": "tiny", "prompt": "ROMEO:", **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("options", HOSTILE, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_hostile_parameters_answer_200_with_valid_completions(client: TestClient, options: dict) -> None:
    out = generate(client, **{"max_new_tokens": 60, **options})
    vocab = client.app.state.registry.models["tiny"].vocab_size
    assert len(out["choices"]) == options.get("num_return_sequences", 1)
    for c in out["choices"]:
        assert all(0 <= t < vocab for t in c["token_ids"])
        assert all(lp is not None for lp in c["logprobs"])
        assert c["finish_reason"] in ("length", "stop", "eos", "banned")
        if options.get("no_repeat_ngram_size") == 1:
            assert c["finish_reason"] == "banned"
            assert len(set(c["token_ids"])) == len(c["token_ids"])
        assert "".join(c["tokens"]) == c["text"]


GOOD = [
    ("/v1/generate", {"prompt": "To be", "max_new_tokens": 120, "stop_at_eos": False}),
    ("/v1/generate", {"prompt": "ROMEO:", "strategy": "sample", "seed": 4, "max_new_tokens": 120,
                      "stop_at_eos": False}),
    ("/v1/generate", {"prompt": "soft", "strategy": "beam", "num_beams": 3, "num_return_sequences": 2,
                      "max_new_tokens": 40}),
    ("/v1/completions", {"prompt": "question", "max_tokens": 120, "temperature": 0, "logprobs": 1}),
    ("/v1/generate/stream", {"prompt": "window", "max_new_tokens": 120, "stop_at_eos": False}),
]


def good_result(client: TestClient, route: str, body: dict) -> Any:
    r = client.post(route, json={"model": "tiny", **body})
    assert r.status_code == 200, r.text
    if route.endswith("stream"):
        events = sse_events(r.text)
        assert events[-1][0] == "done", events[-3:]
        return "".join(d["text"] for e, d in events if e == "token")
    out = r.json()
    return [(c["text"], c.get("token_ids")) for c in out["choices"]]


def test_a_hostile_request_never_changes_the_others(client: TestClient) -> None:
    """Five long requests decode while every hostile one arrives beside them: all five answer
    exactly what they answer alone."""
    alone = [good_result(client, route, body) for route, body in GOOD]
    with ThreadPoolExecutor(len(GOOD) + len(HOSTILE)) as pool:
        good = [pool.submit(good_result, client, route, body) for route, body in GOOD]
        time.sleep(0.2)
        hostile = [pool.submit(generate, client, **{"max_new_tokens": 60, **o}) for o in HOSTILE]
        assert [f.result() for f in good] == alone
        for f in hostile:
            f.result()
    assert client.app.state.registry.models["tiny"].scheduler.depth == 0


def test_scoring_over_the_cost_limit_is_refused(client: TestClient, root: Path) -> None:
    text = CORPUS * 4  # ~ 400 tokens; stride 1 with a 64-token window costs ~ 64 x that
    r = client.post("/v1/perplexity", json={"model": "tiny", "text": text, "stride": 1})
    assert r.status_code == 200  # the default limit leaves room for it
    with client_for(test_settings(root, models=["tiny"], max_score_cost=5000)) as small:
        r = small.post("/v1/perplexity", json={"model": "tiny", "text": text, "stride": 1})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert "max_score_cost" in err["message"] and "stride" in err["message"] and err["param"] == "text"
        r = small.post("/v1/perplexity", json={"model": "tiny", "text": text})  # default stride: cheap
        assert r.status_code == 200, r.text
        r = small.post("/v1/completions", json={"model": "tiny", "prompt": [CORPUS * 2] * 16, "max_tokens": 1,
                                                "echo": True, "logprobs": 1})
        assert r.status_code == 422 and "max_score_cost" in r.json()["error"]["message"]
        assert small.app.state.registry.models["tiny"].scheduler.depth == 0


def test_scoring_stops_at_the_timeout(root: Path) -> None:
    with client_for(test_settings(root, models=["tiny"], request_timeout_s=0.3, max_score_cost=10**9)) as c:
        served = c.app.state.registry.models["tiny"]
        started = time.perf_counter()
        r = c.post("/v1/perplexity", json={"model": "tiny", "texts": [CORPUS * 12] * 8, "stride": 1})
        assert r.status_code == 504, r.text
        assert time.perf_counter() - started < 5
        deadline = time.time() + 5
        while served.scheduler.depth and time.time() < deadline:  # the worker drops the job at its next forward
            time.sleep(0.02)
        assert served.scheduler.depth == 0
        assert c.post("/v1/perplexity", json={"model": "tiny", "text": "To be"}).status_code == 200  # still serves


@pytest.mark.parametrize("model", ["tiny", "word", "bpe"])
def test_token_texts_join_to_the_text(client: TestClient, model: str) -> None:
    for prompt, extra in (("ROMEO: But", {}), ("the question", {"stop": ["e"]}), ("l'été", {"temperature": 0.9,
                                                                                          "seed": 3})):
        body = {"model": model, "prompt": prompt, "max_tokens": 30, "logprobs": 1, "temperature": 0, **extra}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        lp = choice["logprobs"]
        assert "".join(lp["tokens"]) == choice["text"]
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
        g = client.post("/v1/generate", json={"model": model, "prompt": prompt, "max_new_tokens": 30,
                                              "stop": extra.get("stop", []), "stop_at_eos": True})
        c = g.json()["choices"][0]
        assert "".join(c["tokens"]) == c["text"]

        streamed = client.post("/v1/completions", json={**body, "stream": True})
        chunks = [d for _, d in sse_events(streamed.text) if d != "[DONE]" and d["choices"]]
        text = "".join(ch["choices"][0]["text"] for ch in chunks)
        tokens, offsets, lps = [], [], []
        for ch in chunks:
            block = ch["choices"][0]["logprobs"]
            if block:
                tokens += block["tokens"]
                offsets += block["text_offset"]
                lps += block["token_logprobs"]
        assert text == choice["text"]
        assert (tokens, offsets) == (lp["tokens"], lp["text_offset"])
        assert lps == pytest.approx(lp["token_logprobs"], abs=1e-5)


@pytest.mark.parametrize("model", ["tiny", "word", "bpe"])
def test_echo_logprobs_cover_the_echoed_text(client: TestClient, model: str) -> None:
    body = {"model": model, "prompt": "ROMEO: But soft", "max_tokens": 5, "logprobs": 1, "echo": True,
            "temperature": 0}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    chunks = [d for _, d in sse_events(streamed.text) if d != "[DONE]" and d["choices"]]
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == choice["text"]
    tokens = [t for ch in chunks if ch["choices"][0]["logprobs"] for t in ch["choices"][0]["logprobs"]["tokens"]]
    assert tokens == lp["tokens"]


def test_a_held_back_tail_reaches_the_stream(client: TestClient) -> None:
    """A row that ends ``banned`` while a possible stop-string prefix is held back: the stream's
    token events still add up to the completion's text."""
    body = {"model": "tiny", "prompt": "ROMEO:", "max_new_tokens": 300, "no_repeat_ngram_size": 1,
            "stop_at_eos": False, "stop": ["zz" + chr(0x2603)]}
    plain = client.post("/v1/generate", json=body).json()["choices"][0]
    events = sse_events(client.post("/v1/generate/stream", json=body).text)
    assert "".join(d["text"] for e, d in events if e == "token") == plain["text"]
    [finish] = [d for e, d in events if e == "finish"]
    assert finish["finish_reason"] == plain["finish_reason"] == "banned"
    assert json.dumps(plain)  # serialisable: no NaN anywhere
