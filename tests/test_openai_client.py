"""The official ``openai`` client drives ``/v1/completions`` on a real uvicorn server, unchanged."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import uvicorn
from openai import OpenAI
from test_service_helpers import free_port, make_checkpoints, test_settings

from service.app import create_app

KEY = "openai-test-key"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="module")
def base_url(checkpoints: Path) -> Iterator[str]:
    root = checkpoints
    port = free_port()
    app = create_app(test_settings(root, api_key=KEY, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30)


def test_models_list(client: OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny-gru"]


def test_completion(client: OpenAI) -> None:
    c = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and c.model == "tiny"
    assert len(c.choices) == 1 and c.choices[0].finish_reason in ("stop", "length")
    assert c.usage is not None and c.usage.prompt_tokens == 6
    again = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0)
    assert again.choices[0].text == c.choices[0].text


def test_completion_options(client: OpenAI) -> None:
    c = client.completions.create(model="tiny", prompt=["To", "be"], max_tokens=6, n=2, temperature=0.8, top_p=0.9,
                                  seed=5, logprobs=2, echo=True, stop=["\n"])
    assert [ch.index for ch in c.choices] == [0, 1, 2, 3]
    assert c.choices[0].text.startswith("To") and c.choices[2].text.startswith("be")
    lp = c.choices[0].logprobs
    assert lp is not None and lp.tokens[:2] == ["T", "o"] and len(lp.token_logprobs) == len(lp.text_offset)
    same = client.completions.create(model="tiny", prompt=["To", "be"], max_tokens=6, n=2, temperature=0.8,
                                     top_p=0.9, seed=5, logprobs=2, echo=True, stop=["\n"])
    assert [ch.text for ch in same.choices] == [ch.text for ch in c.choices]


def test_streaming(client: OpenAI) -> None:
    full = client.completions.create(model="tiny", prompt="To be", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="To be", max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_errors_map_to_openai_exceptions(client: OpenAI, base_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="nope", prompt="a")
    assert "nope" in str(exc.value)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="tiny", prompt="a", max_tokens=10**6)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=base_url, api_key="wrong", max_retries=0).completions.create(model="tiny", prompt="a")


def test_logit_bias_through_the_official_client(client: OpenAI, base_url: str) -> None:
    import httpx

    info = httpx.post(f"{base_url.removesuffix('/v1')}/tokenize", json={"model": "tiny", "prompt": "q",
                                                                        "add_special_tokens": False},
                      headers={"Authorization": f"Bearer {KEY}"}).json()
    q = info["tokens"][0]
    c = client.completions.create(model="tiny", prompt="To be", max_tokens=5, temperature=0,
                                  logit_bias={str(q): 100})
    assert c.choices[0].text == "qqqqq"
    c = client.completions.create(model="tiny", prompt="To be", max_tokens=5, temperature=0.7, seed=2,
                                  logit_bias={str(q): -100})
    assert "q" not in c.choices[0].text


def test_beam_search_through_the_official_client(client: OpenAI, base_url: str) -> None:
    """``use_beam_search`` (vLLM's extension field) reaches lmforge's beam search: the n best of
    best_of beams, the same as /v1/generate's beam strategy gives."""
    import httpx

    c = client.completions.create(model="tiny", prompt="To be", max_tokens=8, n=2,
                                  extra_body={"use_beam_search": True, "best_of": 4})
    texts = [choice.text for choice in c.choices]
    ref = httpx.post(f"{base_url.removesuffix('/v1')}/v1/generate", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "tiny", "prompt": "To be", "max_new_tokens": 8, "strategy": "beam",
                           "num_beams": 4, "num_return_sequences": 2}).json()
    assert texts == [ch["text"] for ch in ref["choices"]]
    stream = client.completions.create(model="tiny", prompt="To be", max_tokens=8, n=2, stream=True,
                                       extra_body={"use_beam_search": True, "best_of": 4})
    streamed = {0: "", 1: ""}
    for chunk in stream:
        for ch in chunk.choices:
            streamed[ch.index] += ch.text
    assert [streamed[0], streamed[1]] == texts


def test_chat_completions_through_the_official_client(client: OpenAI) -> None:
    """``chat.completions.create``, plain and streamed, against a base model: one assistant
    message per choice, the same text either way, usage when asked."""
    messages = [{"role": "system", "content": "A play."}, {"role": "user", "content": "Speak."}]
    c = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    text = c.choices[0].message.content
    assert isinstance(text, str) and c.choices[0].finish_reason in ("stop", "length")
    assert c.usage is not None and c.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c.usage.completion_tokens
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [c.choices[0].finish_reason]
    sampled = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=2, seed=3,
                                             temperature=0.8, logprobs=True, top_logprobs=1)
    assert len(sampled.choices) == 2
    lp = sampled.choices[0].logprobs
    assert lp is not None and lp.content and all(len(t.top_logprobs) == 1 for t in lp.content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in lp.content)  # the likeliest, chosen or not
    greedy = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=3)
    content = greedy.choices[0].logprobs.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content if t.token)
    assert all(a.logprob >= b.logprob for t in content for a, b in zip(t.top_logprobs, t.top_logprobs[1:], strict=False))


def reference_top(checkpoint: Path, ids: list[int], k: int) -> list[dict[int, tuple[str, float]]]:
    """The ``k`` most likely next tokens (id -> text, logprob) after each prefix of ``ids`` (a
    char model), from one teacher-forced forward of the checkpoint loaded here, outside the server."""
    import torch

    from lm.checkpoint import load_checkpoint, read_context

    model, tok, _ = load_checkpoint(checkpoint, device="cpu")
    start = list(read_context(checkpoint, tok).start)
    with torch.no_grad():
        logits, _ = model(torch.tensor([start + ids[:-1]]), None, use_cache=False)
    logp = logits[0, len(start) - 1 :].float().log_softmax(-1)
    values, best = logp.topk(k)


    def text(t: int) -> str:  # a byte token alone is no text: OpenAI's bytes:\\xNN
        raw = tok.token_bytes(t)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    return [{t: (text(t), v) for t, v in zip(row_ids, row_values, strict=True)}
            for row_ids, row_values in zip(best.tolist(), values.tolist(), strict=True)]


@pytest.mark.parametrize("stream", [False, True])
def test_top_logprobs_for_prompt_and_completion_match_an_outside_forward(client: OpenAI, checkpoints: Path,
                                                                         stream: bool) -> None:
    """``logprobs: 3`` with ``echo``: every position's 3 most likely tokens (and the chosen
    one, where it is not among them), equal to the checkpoint's own distribution computed
    outside the server; streamed chunks carry the same, position by position."""
    prompt = "To be"
    kw = dict(model="tiny", prompt=prompt, max_tokens=6, temperature=0.9, seed=4, logprobs=3, echo=True)
    if stream:
        tokens, lps, tops = [], [], []
        for chunk in client.completions.create(**kw, stream=True):
            for ch in chunk.choices:
                if ch.logprobs is not None:
                    tokens += ch.logprobs.tokens
                    lps += ch.logprobs.token_logprobs
                    tops += ch.logprobs.top_logprobs
        text = "".join(tokens)
    else:
        c = client.completions.create(**kw)
        lp = c.choices[0].logprobs
        assert lp is not None
        tokens, lps, tops, text = lp.tokens, lp.token_logprobs, lp.top_logprobs, c.choices[0].text
    assert text.startswith(prompt) and "".join(tokens) == text and len(tokens) == len(tops)
    import httpx

    from tokenizer import load_tokenizer

    generated = httpx.post(f"{str(client.base_url).removesuffix('/v1/')}/v1/generate",
                           headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "tiny", "prompt": prompt, "max_new_tokens": 6, "strategy": "sample",
                                 "temperature": 0.9, "seed": 4}).json()["choices"][0]["token_ids"]
    ids = load_tokenizer(checkpoints / "tiny").encode(prompt) + generated
    assert len(ids) == len(tokens)
    ref = reference_top(checkpoints / "tiny", ids, 3)
    tok = load_tokenizer(checkpoints / "tiny")
    for pos, (token_id, token, lp_, top, want) in enumerate(zip(ids, tokens, lps, tops, ref, strict=True)):
        assert top is not None and len(top) in (3, 4)
        best3 = dict(list(top.items())[:3])
        assert list(best3.values()) == pytest.approx([v for _, v in want.values()], abs=1e-4)
        if not tok.decode(ids[:pos]).endswith("\ufffd"):  # after whole characters, a token reads as alone
            # (the chosen one as its piece of the text: OpenAI's tokens[i])
            assert list(best3) == [token if t == token_id else text for t, (text, _) in want.items()]
        assert top[token] == pytest.approx(lp_, abs=1e-6)  # the chosen token is always there


def test_loglikelihood_scoring_the_way_evaluation_harnesses_do(client: OpenAI) -> None:
    """``echo`` with ``max_tokens: 0`` and ``logprobs``: the prompt's tokens with their
    log-probabilities (the first one's null), offsets into the echoed text, nothing generated;
    the sum is the prompt's log-likelihood, as /v1/perplexity computes it."""
    import math

    import httpx

    prompt = "To be, or not to be"
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = c.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert lp is not None and "".join(lp.tokens) == prompt
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert lp.token_logprobs[0] is None or isinstance(lp.token_logprobs[0], float)
    total = sum(x for x in lp.token_logprobs if x is not None)
    score = httpx.post(f"{str(client.base_url).removesuffix('/v1/')}/v1/perplexity",
                       headers={"Authorization": f"Bearer {KEY}"}, json={"model": "tiny", "text": prompt}).json()
    nll = score["results"][0]["nll"]
    assert math.isclose(-total, nll, rel_tol=1e-4, abs_tol=1e-4)
