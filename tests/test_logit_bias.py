"""``logit_bias`` (OpenAI's semantics: id -> [-100, 100] added to the logit) and
``suppress_tokens`` (ids never chosen), through the engine's constraints, for every strategy,
on /v1/generate and /v1/completions (also with the official ``openai`` client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings

from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams, ParamError
from lm.pipeline import Pipeline


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bias")
    make_checkpoint(root / "tiny")
    return root


@pytest.fixture(scope="module")
def pipe(root: Path) -> Pipeline:
    return Pipeline.from_checkpoint(root / "tiny")


def ids_of(pipe: Pipeline, **params: object) -> list[list[int]]:
    out = generate(pipe.model, pipe.tokenizer, ["To be"], GenerationParams(max_new_tokens=30, stop_at_eos=False,
                                                                             **params), context=pipe.context)
    return [c.token_ids for c in out[0]]


def test_params_normalise_and_check() -> None:
    p = GenerationParams(logit_bias={5: 1.5, 2: -3}, suppress_tokens=[7, 7, 4])
    assert p.logit_bias == ((2, -3.0), (5, 1.5)) and p.suppress_tokens == (4, 7) and p.constrains
    for bad, field in (({1: 101}, "logit_bias"), ({-1: 1}, "logit_bias"), ({1: float("nan")}, "logit_bias")):
        with pytest.raises(ParamError, match=field):
            GenerationParams(logit_bias=bad)
    with pytest.raises(ParamError, match="suppress_tokens"):
        GenerationParams(suppress_tokens=[-2])


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_suppressed_tokens_are_never_chosen(pipe: Pipeline, strategy: str) -> None:
    plain = ids_of(pipe, strategy=strategy, seed=1)
    common = sorted({t for seq in plain for t in seq})[:5]
    for seq in ids_of(pipe, strategy=strategy, seed=1, suppress_tokens=common):
        assert not set(seq) & set(common)


def test_a_strong_bias_forces_and_a_negative_one_all_but_bans(pipe: Pipeline) -> None:
    target = pipe.tokenizer.encode("q")[0]
    assert ids_of(pipe, logit_bias={target: 100})[0] == [target] * 30
    greedy = ids_of(pipe)[0]
    avoided = ids_of(pipe, logit_bias={t: -100 for t in set(greedy)})[0]
    assert not set(avoided) & set(greedy)
    torch.manual_seed(0)
    sampled = ids_of(pipe, strategy="sample", seed=3, logit_bias={target: 100})[0]
    assert sampled.count(target) >= 28


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    with client_for(test_settings(root)) as c:
        yield c


def test_over_http_on_both_routes(client: TestClient, pipe: Pipeline) -> None:
    target = pipe.tokenizer.encode("q")[0]
    r = client.post("/v1/generate", json={"prompt": "To be", "max_new_tokens": 5, "stop_at_eos": False,
                                          "logit_bias": {str(target): 100}})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "qqqqq"
    r = client.post("/v1/generate", json={"prompt": "To be", "max_new_tokens": 20, "stop_at_eos": False,
                                          "suppress_tokens": [target], "logit_bias": {str(target): 100}})
    assert "q" not in r.json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={"prompt": "To be", "max_tokens": 4, "temperature": 0,
                                             "logit_bias": {str(target): 100}})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "qqqq"
    for body, param in (({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"99999": 1}}, "logit_bias"),
                        ({"logit_bias": {"1": 500}}, "logit_bias"), ({"suppress_tokens": [99999]}, "suppress_tokens")):
        r = client.post("/v1/generate", json={"prompt": "a", **body})
        assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text


def test_suppressing_everything_ends_only_that_request(client: TestClient, pipe: Pipeline) -> None:
    everything = list(range(pipe.tokenizer.vocab_size))
    r = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 5, "suppress_tokens": everything})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "banned"


def test_non_ascii_digit_keys_and_beam_widths_name_the_field(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1, "logit_bias": {"²": 1}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "logit_bias", r.text
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1, "use_beam_search": True,
                                             "best_of": 10_000})
    assert r.status_code == 422 and r.json()["error"]["param"] == "best_of", r.text
