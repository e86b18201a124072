"""Hand-written hostile requests and files: each gets a 4xx (or a sane 200), never a 5xx."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings

from tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    make_checkpoint(root / "tiny")
    return root


@pytest.fixture(scope="module")
def client(checkpoints: Path) -> Iterator[TestClient]:
    with client_for(test_settings(checkpoints)) as c:
        yield c


ROUTES = ("/v1/generate", "/v1/generate/stream", "/v1/completions", "/v1/perplexity")


def body_for(path: str, prompt: object, **extra: object) -> dict:
    key = "text" if path == "/v1/perplexity" else "prompt"
    return {key: prompt, **extra}


@pytest.mark.parametrize("path", ROUTES)
def test_empty_prompt(client: TestClient, path: str) -> None:
    extra = {"max_new_tokens": 4, "stop_at_eos": False} if path.startswith("/v1/generate") else {}
    r = client.post(path, json=body_for(path, "", **extra))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ROUTES)
def test_prompt_of_unseen_characters(client: TestClient, path: str) -> None:
    r = client.post(path, json=body_for(path, "🦜ЖЖ漢字\u200b\U0010ffff"))
    assert r.status_code == 200, r.text
    if path == "/v1/perplexity":
        result = r.json()["results"][0]
        assert result["tokens"] > 0 and result["characters"] == 7


def test_lone_surrogate_escape(client: TestClient) -> None:
    raw = b'{"prompt": "\\ud800abc", "max_new_tokens": 2}'
    r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text


def test_one_megabyte_body_is_413(client: TestClient) -> None:
    for path in ROUTES:
        r = client.post(path, json=body_for(path, "a" * 1_000_000))
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("n", [0, 1, 10**6, 2**40])
def test_max_new_tokens_extremes(client: TestClient, n: int) -> None:
    r = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": n})
    assert r.status_code == (200 if n <= 512 else 422), r.text
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": n})
    assert r.status_code == (200 if n <= 512 else 422), r.text


@pytest.mark.parametrize("temperature", [0, 1e-9, 1e6, 1e308])
def test_temperature_extremes(client: TestClient, temperature: float) -> None:
    r = client.post("/v1/generate", json={"prompt": "a", "strategy": "sample", "temperature": temperature,
                                          "max_new_tokens": 4, "seed": 0})
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", json={"prompt": "a", "temperature": temperature, "max_tokens": 4})
    assert r.status_code == (200 if temperature <= 2 else 422), r.text


def test_non_finite_numbers_are_refused(client: TestClient) -> None:
    for raw in (b'{"prompt": "a", "temperature": NaN}', b'{"prompt": "a", "top_p": Infinity}',
                b'{"prompt": "a", "temperature": 1e999}'):
        r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), r.text


def test_top_k_larger_than_the_vocabulary(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"prompt": "a", "strategy": "sample", "top_k": 10**9, "max_new_tokens": 4})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": 5}, {"prompt": None}, {"prompt": ["a", 1]}, {"prompt": {"x": 1}}, {"prompts": "a"},
        {"prompt": "a", "seed": -1}, {"prompt": "a", "seed": 2**64}, {"prompt": "a", "num_beams": 0},
        {"prompt": "a", "early_stopping": "yes"}, {"prompt": "a", "top_k": 1.5}, [1, 2], "a", 3, None,
    ],
)
def test_wrong_types_are_422(client: TestClient, body: object) -> None:
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    assert "error" in r.json()


def test_unknown_fields_are_named(client: TestClient) -> None:
    for path in ROUTES:
        r = client.post(path, json=body_for(path, "a", frobnicate=True))
        assert r.status_code == 422 and r.json()["error"]["param"] == "frobnicate", r.text


def test_invalid_utf8_bytes(client: TestClient) -> None:
    for path in ROUTES:
        r = client.post(path, content=b'{"prompt": "a\xc3\x28b", "text": "\xff"}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text


def test_wrong_content_type_still_parses_or_refuses(client: TestClient) -> None:
    r = client.post("/v1/generate", content=b"prompt=a", headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500


def test_many_stop_strings_and_long_ones(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"prompt": "a", "stop": ["x" * 10000]})
    assert r.status_code == 200, r.text
    r = client.post("/v1/generate", json={"prompt": "a", "stop": ["x"] * 100})
    assert r.status_code == 422


def test_beam_wider_than_the_batch(checkpoints: Path) -> None:
    with client_for(test_settings(checkpoints, max_batch_rows=2, max_num_beams=8)) as c:
        r = c.post("/v1/generate", json={"prompt": "a", "strategy": "beam", "num_beams": 4, "max_new_tokens": 2})
        assert r.status_code == 422 and r.json()["error"]["param"] == "num_beams", r.text


def write_pickle_payload(directory: Path) -> None:
    """A weights file that is a pickle whose loading would create a file (if anything unpickled it)."""

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(directory / "PWNED"), "w"))

    (directory / "model.safetensors").write_bytes(pickle.dumps(Payload()))


def test_bad_checkpoints_are_skipped_and_the_rest_served(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "good")
    make_checkpoint(tmp_path / "pickled")
    write_pickle_payload(tmp_path / "pickled")
    make_checkpoint(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    make_checkpoint(tmp_path / "badconfig")
    (tmp_path / "badconfig" / "config.json").write_text('{"format": "lmforge", "version": 1, "model": {"n_head": -1}}')
    make_checkpoint(tmp_path / "mismatched")
    corpus = tmp_path / "abc.txt"
    corpus.write_text("abc\n", encoding="utf-8")
    train_tokenizer("char", [corpus], None).save(tmp_path / "mismatched")  # 4 specials + 4 chars != the model's
    with client_for(test_settings(tmp_path)) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["good"]
        assert c.get("/ready").status_code == 200
        assert c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2}).status_code == 200
        assert c.post("/v1/generate", json={"model": "pickled", "prompt": "a"}).status_code == 404
    assert not (tmp_path / "pickled" / "PWNED").exists()
