"""Every endpoint's happy path, through FastAPI's TestClient, on tiny random models."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoints, sse_events, test_settings

from service.scheduler import Submission

LENGTH = {"stop_at_eos": False}
"""Random tiny models emit <eos> at random; tests that count tokens switch it off."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="module")
def client(checkpoints: Path) -> Iterator[TestClient]:
    with client_for(test_settings(checkpoints)) as c:
        yield c


def gen(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/generate", json={"model": "tiny", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_ready_models(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "models": ["tiny", "tiny-gru"]}
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    cards = {m["id"]: m for m in body["data"]}
    assert set(cards) == {"tiny", "tiny-gru"}
    assert cards["tiny"]["object"] == "model"
    assert cards["tiny"]["config"]["family"] == "transformer"
    assert cards["tiny"]["max_context"] == 64
    assert cards["tiny-gru"]["config"]["cell"] == "gru" and cards["tiny-gru"]["max_context"] is None
    assert cards["tiny"]["parameters"] > 0 and cards["tiny"]["device"] == "cpu"


def test_generate_greedy_shape_and_determinism(client: TestClient) -> None:
    body = gen(client, prompt="ROMEO:", max_new_tokens=12, **LENGTH)
    assert body["object"] == "generation" and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["prompt_index"] == 0 and choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert len(choice["token_ids"]) == len(choice["tokens"]) == len(choice["logprobs"]) == 12
    assert all(lp is None or lp <= 0 for lp in choice["logprobs"])
    assert choice["cumulative_logprob"] == pytest.approx(sum(choice["logprobs"]))
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}
    assert gen(client, prompt="ROMEO:", max_new_tokens=12, **LENGTH)["choices"] == body["choices"]


def test_generate_prompts_batch_equals_single(client: TestClient) -> None:
    prompts = ["To be", "ROMEO:", "a"]
    batch = gen(client, prompts=prompts, max_new_tokens=8, **LENGTH)
    assert [c["prompt_index"] for c in batch["choices"]] == [0, 1, 2]
    for i, p in enumerate(prompts):
        single = gen(client, prompt=p, max_new_tokens=8, **LENGTH)["choices"][0]
        assert single["text"] == batch["choices"][i]["text"]


def test_generate_on_the_other_model(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"model": "tiny-gru", "prompt": "ab", "max_new_tokens": 5, **LENGTH})
    assert r.status_code == 200 and r.json()["model"] == "tiny-gru"
    assert len(r.json()["choices"][0]["token_ids"]) == 5


def test_sample_is_seeded_and_returns_n_sequences(client: TestClient) -> None:
    opts = {"prompt": "To", "strategy": "sample", "temperature": 1.5, "top_k": 20, "top_p": 0.95,
            "seed": 3, "num_return_sequences": 3, "max_new_tokens": 16, **LENGTH}
    a, b = gen(client, **opts), gen(client, **opts)
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert a["choices"] == b["choices"]
    assert len({c["text"] for c in a["choices"]}) > 1
    assert gen(client, **{**opts, "seed": 4})["choices"] != a["choices"]


def test_beam_returns_best_first(client: TestClient) -> None:
    body = gen(client, prompt="To", strategy="beam", num_beams=4, num_return_sequences=2, max_new_tokens=6,
               length_penalty=0.0, **LENGTH)
    first, second = body["choices"]
    assert (first["index"], second["index"]) == (0, 1)
    assert first["cumulative_logprob"] >= second["cumulative_logprob"]


def test_stop_string_is_cut(client: TestClient) -> None:
    free = gen(client, prompt="To", max_new_tokens=20, **LENGTH)["choices"][0]["text"]
    if len(free) < 4:
        pytest.skip("the random model produced too little text")
    stop = free[2:4]
    cut = gen(client, prompt="To", max_new_tokens=20, stop=[stop], **LENGTH)["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == free[: free.index(stop)]


def test_max_new_tokens_zero(client: TestClient) -> None:
    (choice,) = gen(client, prompt="To", max_new_tokens=0)["choices"]
    assert choice["text"] == "" and choice["token_ids"] == [] and choice["finish_reason"] == "length"


def test_stream_matches_generate(client: TestClient) -> None:
    body = {"model": "tiny", "prompt": "ROMEO:", "max_new_tokens": 10, **LENGTH}
    expected = gen(client, **body)["choices"][0]
    r = client.post("/v1/generate/stream", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    tokens = [d for e, d in events if e == "token"]
    assert [t["token_id"] for t in tokens] == expected["token_ids"]
    assert "".join(t["text"] for t in tokens) == expected["text"]
    finish = [d for e, d in events if e == "finish"]
    assert finish == [{"prompt_index": 0, "index": 0, "text": expected["text"], "finish_reason": "length",
                       "usage": {"prompt_tokens": 6, "completion_tokens": 10, "total_tokens": 16}}]
    assert events[-1][0] == "done"
    assert events[-1][1]["usage"]["completion_tokens"] == 10
    assert events[-1][1]["id"] == r.headers["x-request-id"]


def test_stream_beam_sends_finish_events_only(client: TestClient) -> None:
    r = client.post("/v1/generate/stream", json={"prompt": "To", "model": "tiny", "strategy": "beam", "num_beams": 2,
                                                 "num_return_sequences": 2, "max_new_tokens": 4})
    kinds = [e for e, _ in sse_events(r.text)]
    assert kinds == ["finish", "finish", "done"]


async def _post_and_leave_before_the_first_event(app, path: str, body: dict) -> None:  # noqa: ANN001
    """Call the ASGI app as a server would for a client that is gone when the headers go out:
    sending the response start fails, so the event stream is never iterated."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                         (b"content-length", str(len(payload)).encode())],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            raise OSError("client gone")

    with contextlib.suppress(Exception):  # the server's own error: nobody is left to answer
        await app(scope, receive, send)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/generate/stream", {"prompt": "a", "max_new_tokens": 100000, "stop_at_eos": False}),
    ("/v1/completions", {"prompt": "a", "max_tokens": 100000, "stream": True}),
])
def test_stream_abandoned_before_its_first_event_is_cancelled(
    checkpoints: Path, monkeypatch: pytest.MonkeyPatch, path: str, body: dict
) -> None:
    """A stream whose own ``finally`` may never run: the route's dependency cancels the work."""
    cancelled: list[str] = []
    cancel = Submission.cancel

    def spy(self: Submission) -> None:
        cancelled.extend(t.request_id for t in self.tickets)
        cancel(self)

    monkeypatch.setattr(Submission, "cancel", spy)
    with client_for(test_settings(checkpoints, models=["tiny"], max_new_tokens=100000)) as c:
        scheduler = c.app.state.registry.models["tiny"].scheduler
        c.portal.call(_post_and_leave_before_the_first_event, c.app, path, body)
        assert cancelled
        deadline = time.monotonic() + 5
        while scheduler.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.depth == 0
        assert c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1}).status_code == 200


def test_perplexity(client: TestClient) -> None:
    r = client.post("/v1/perplexity", json={"model": "tiny", "texts": ["To be, or not", "ROMEO"], "token_logprobs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "perplexity"
    first, second = body["results"]
    assert first["tokens"] == 13 and first["characters"] == 13 and second["tokens"] == 5
    assert first["perplexity"] > 1
    assert len(first["token_logprobs"]) == 13
    assert first["nll"] == pytest.approx(-sum(first["token_logprobs"]), rel=1e-6)
    assert first["nll_per_token"] == pytest.approx(first["nll"] / 13)
    assert first["perplexity"] == pytest.approx(math.exp(first["nll_per_token"]), rel=1e-6)
    assert body["usage"]["prompt_tokens"] == 18
    single = client.post("/v1/perplexity", json={"model": "tiny", "text": "ROMEO"}).json()["results"][0]
    assert single["token_logprobs"] is None and single["nll"] == pytest.approx(second["nll"], rel=1e-5)


def test_perplexity_sliding_window(client: TestClient) -> None:
    text = "To be, or not to be, that is the question. " * 4  # longer than the 64-token context
    r = client.post("/v1/perplexity", json={"model": "tiny", "text": text, "stride": 16})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["tokens"] == len(text)


def test_completions_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "ROMEO:", "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["id"] == r.headers["x-request-id"]
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["logprobs"] is None and choice["finish_reason"] in ("stop", "length")
    greedy = gen(client, prompt="ROMEO:", max_new_tokens=8)["choices"][0]
    assert choice["text"] == greedy["text"]
    assert body["usage"]["prompt_tokens"] == 6
    assert body["usage"]["total_tokens"] == 6 + body["usage"]["completion_tokens"]


def test_completions_n_logprobs_echo(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": ["To", "be"], "max_tokens": 5, "n": 2,
                                             "temperature": 0, "logprobs": 1, "echo": True})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] == body["choices"][1]["text"]  # greedy: n identical
    c = body["choices"][0]
    assert c["text"].startswith("To")
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == len(lp["top_logprobs"])
    assert lp["tokens"][:2] == ["T", "o"] and lp["text_offset"][:3] == [0, 1, 2]
    assert lp["top_logprobs"][2] == {lp["tokens"][2]: lp["token_logprobs"][2]}


def test_completions_sampling_and_token_prompts(client: TestClient) -> None:
    ids = client.post("/v1/generate", json={"model": "tiny", "prompt": "To", "max_new_tokens": 1}).json()
    prompt_ids = [int(i) for i in [ids["choices"][0]["token_ids"][0], 5, 6]]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt_ids, "max_tokens": 4, "seed": 1,
                                             "temperature": 0.9, "top_p": 0.9, "n": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    again = client.post("/v1/completions", json={"model": "tiny", "prompt": [prompt_ids], "max_tokens": 4, "seed": 1,
                                                 "temperature": 0.9, "top_p": 0.9, "n": 2})
    assert [c["text"] for c in again.json()["choices"]] == [c["text"] for c in r.json()["choices"]]


def test_completions_stream(client: TestClient) -> None:
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "echo": True}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [d for _, d in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 6
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    full = client.post("/v1/completions", json={**body, "stream": False, "stream_options": None}).json()
    assert text == full["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_metrics(client: TestClient) -> None:
    gen(client, prompt="To", max_new_tokens=3, **LENGTH)
    text = client.get("/metrics").text
    assert 'lmforge_requests_total{method="POST",route="/v1/generate",status="200"}' in text
    assert 'lmforge_request_latency_seconds_bucket{le="0.005",route="/v1/generate"}' in text
    assert 'lmforge_tokens_generated_total{model="tiny"}' in text
    assert 'lmforge_queue_depth{model="tiny"} 0.0' in text
    assert 'lmforge_batch_size_count{model="tiny"}' in text
    assert "lmforge_models_loaded 2.0" in text


def test_docs_and_schema(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/generate/stream", "/v1/perplexity", "/v1/completions", "/v1/models", "/health",
            "/ready", "/metrics"} <= set(schema["paths"])
    gen_schema = schema["components"]["schemas"]["GenerateRequest"]
    assert gen_schema["examples"] and gen_schema["properties"]["top_p"]["default"] == 1.0
    assert "422" in schema["paths"]["/v1/generate"]["post"]["responses"]


def test_without_a_key_everything_is_open_and_the_schema_declares_none(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 200 and client.get("/metrics").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert all(op.get("security") in (None, []) for ops in schema["paths"].values() for op in ops.values())


def test_stream_routes_document_their_events(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    stream = paths["/v1/generate/stream"]["post"]["responses"]
    item = stream["200"]["content"]["text/event-stream"]["itemSchema"]
    assert item["properties"]["event"]["enum"] == ["token", "finish", "done", "error"]
    assert item["properties"]["data"]["contentMediaType"] == "application/json"
    assert set(stream["422"]["content"]) == {"application/json"}  # errors are JSON, not events
    completions = paths["/v1/completions"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(completions)


def test_request_id_is_echoed(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"prompt": "To", "model": "tiny", "max_new_tokens": 1},
                    headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "abc-123"
    r = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


def test_one_log_line_per_request_without_prompt(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lmforge.access"):
        gen(client, prompt="SECRET PROMPT", max_new_tokens=4, **LENGTH)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmforge.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "/v1/generate" and line["status"] == 200 and line["model"] == "tiny"
    assert line["prompt_tokens"] == 13 and line["completion_tokens"] == 4 and line["latency_ms"] >= 0
    assert "SECRET" not in caplog.text


def test_log_prompts_setting(checkpoints: Path, caplog: pytest.LogCaptureFixture) -> None:
    with client_for(test_settings(checkpoints, models=["tiny"], log_prompts=True)) as c, \
            caplog.at_level(logging.INFO, logger="lmforge.access"):
        c.post("/v1/generate", json={"prompt": "VISIBLE", "max_new_tokens": 1})
    assert "VISIBLE" in caplog.text


def test_bf16_weights_setting(checkpoints: Path) -> None:
    """``--dtype bf16`` loads the weights in bf16; generation and scoring work and agree with fp32."""
    with client_for(test_settings(checkpoints, dtype="bf16")) as low, client_for(test_settings(checkpoints)) as ref:
        cards = {m["id"]: m for m in low.get("/v1/models").json()["data"]}
        assert set(cards) == {"tiny", "tiny-gru"}
        assert {c["dtype"] for c in cards.values()} == {"bfloat16"}
        assert {m["dtype"] for m in ref.get("/v1/models").json()["data"]} == {"float32"}
        body = {"model": "tiny", "prompt": "To be", "max_new_tokens": 6, **LENGTH}
        out = low.post("/v1/generate", json=body)
        assert out.status_code == 200, out.text
        assert len(out.json()["choices"][0]["token_ids"]) == 6
        text = {"model": "tiny", "text": "To be, or not to be"}
        p16 = low.post("/v1/perplexity", json=text).json()["results"][0]["perplexity"]
        p32 = ref.post("/v1/perplexity", json=text).json()["results"][0]["perplexity"]
        assert p16 == pytest.approx(p32, rel=0.05)
