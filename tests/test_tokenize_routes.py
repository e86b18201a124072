"""``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` in vLLM's shapes, for every tokenizer
kind: the ids are the ones generation and scoring use and count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings
from test_service_isolation import make_kind_checkpoint

TEXT = "To be, or not to be: that is the question.\n"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("tok")
    make_checkpoint(root / "char")
    make_kind_checkpoint(root / "word", "word")
    make_kind_checkpoint(root / "bpe", "bpe")
    with client_for(test_settings(root)) as c:
        yield c


@pytest.mark.parametrize("model", ["char", "word", "bpe"])
def test_tokenize_counts_what_generation_counts(client: TestClient, model: str) -> None:
    r = client.post("/tokenize", json={"model": model, "prompt": TEXT, "add_special_tokens": False,
                                       "return_token_strs": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] in (32, 64, None)
    if model != "word":  # the word tokenizer splits on whitespace: its texts are the words
        assert "".join(out["token_strs"]) == TEXT
    usage = client.post("/v1/completions", json={"model": model, "prompt": TEXT, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == out["count"]
    framed = client.post("/tokenize", json={"model": model, "prompt": TEXT}).json()
    info = client.get("/tokenizer_info", params={"model": model}).json()
    assert framed["tokens"] == info["text_start_ids"] + out["tokens"]
    back = client.post("/detokenize", json={"model": model, "tokens": out["tokens"]}).json()["prompt"]
    if model == "word":  # words outside the test corpus's vocabulary come back as <unk>
        assert len(back.split()) == len(TEXT.split()) and "question." in back
    else:
        assert back == TEXT


def test_tokenizer_info_names_the_specials(client: TestClient) -> None:
    info = client.get("/tokenizer_info", params={"model": "word"}).json()
    assert info["tokenizer_kind"] == "word" and info["eos_token"] == "<eos>" and info["eos_token_id"] == 3
    assert (info["bos_token_id"], info["pad_token_id"], info["unk_token"]) == (2, 0, "<unk>")
    assert info["vocab_size"] > 4


def test_bad_input_is_a_4xx_naming_the_field(client: TestClient) -> None:
    r = client.post("/detokenize", json={"model": "char", "tokens": [10**6]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "tokens"
    r = client.post("/detokenize", json={"model": "char", "tokens": [-1]})
    assert r.status_code == 422
    assert client.post("/tokenize", json={"model": "char"}).status_code == 422
    assert client.post("/tokenize", json={"prompt": "x"}).status_code == 422  # several models: name one
    assert client.get("/tokenizer_info", params={"model": "nope"}).status_code == 404
