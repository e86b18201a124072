"""Every error path: status code, the one JSON error shape, and a message naming field and limit."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoints, test_settings


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"))


LIMITS = {"max_prompt_tokens": 32, "max_new_tokens": 40, "max_num_beams": 3, "max_return_sequences": 2,
          "max_prompts": 3, "max_score_tokens": 50, "max_body_bytes": 4096}


@pytest.fixture(scope="module")
def client(checkpoints: Path) -> Iterator[TestClient]:
    with client_for(test_settings(checkpoints, **LIMITS)) as c:
        yield c


def error(r, status: int, param: str | None = None, *words: str) -> dict:
    """Check the status and the error body; return the body's ``error``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    for w in words:
        assert w in err["message"], err
    return err


def post(client: TestClient, path: str = "/v1/generate", **body: object):
    return client.post(path, json={"model": "tiny", **body})


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "x" * 33}, "prompt", ("33", "32", "max_prompt_tokens")),
        ({"prompts": ["a", "x" * 40]}, "prompts[1]", ("40", "max_prompt_tokens")),
        ({"prompts": ["a"] * 4}, "prompts", ("4", "3", "max_prompts")),
        ({"prompt": "a", "max_new_tokens": 41}, "max_new_tokens", ("41", "40", "max_new_tokens")),
        ({"prompt": "a", "strategy": "beam", "num_beams": 4}, "num_beams", ("4", "3", "max_num_beams")),
        ({"prompt": "a", "strategy": "sample", "num_return_sequences": 3}, "num_return_sequences",
         ("max_return_sequences",)),
    ],
)
def test_limits_name_field_and_limit(client: TestClient, body: dict, param: str, words: tuple[str, ...]) -> None:
    err = error(post(client, **body), 422, param, *words)
    assert err["type"] == "invalid_request_error" and err["code"] == "over_limit"


def test_completions_limits_use_openai_names(client: TestClient) -> None:
    error(post(client, "/v1/completions", prompt="a", max_tokens=41), 422, "max_tokens", "40", "max_new_tokens")
    error(post(client, "/v1/completions", prompt="a", n=3, temperature=0.5), 422, "n", "max_return_sequences")
    error(post(client, "/v1/completions", prompt=["a"] * 4), 422, "prompt", "max_prompts")
    error(post(client, "/v1/completions", prompt=[[1, 2], [999]]), 422, "prompt", "999")
    error(post(client, "/v1/completions", prompt=[]), 422, "prompt")
    error(post(client, "/v1/completions", prompt="a", stop=["a", "b", "c", "d", "e"]), 422, "stop")
    error(post(client, "/v1/completions", prompt="a", best_of=3), 422, "best_of")
    error(post(client, "/v1/completions", prompt="a", presence_penalty=0.5), 422, "presence_penalty")
    error(post(client, "/v1/completions", prompt="a", logprobs=6), 422, "logprobs")


def test_perplexity_limits(client: TestClient) -> None:
    error(post(client, "/v1/perplexity", text="x" * 51), 422, "text", "51", "50", "max_score_tokens")
    error(post(client, "/v1/perplexity", texts=["a"] * 4), 422, "texts", "max_prompts")
    error(post(client, "/v1/perplexity", text="abc", stride=65), 422, "stride", "stride")
    error(post(client, "/v1/perplexity", text="a", texts=["b"]), 422, "text", "exactly one")
    error(post(client, "/v1/perplexity"), 422, "text", "exactly one")


def test_engine_checks_become_422(client: TestClient) -> None:
    error(post(client, prompt="a", strategy="sample", top_p=0), 422, "top_p", "top_p must be in (0, 1]")
    error(post(client, prompt="a", strategy="beam", num_beams=1, num_return_sequences=2), 422,
          "num_return_sequences", "num_beams")
    error(post(client, prompt="a", stop=[""]), 422, "stop")


def test_validation_errors_name_the_field(client: TestClient) -> None:
    error(post(client, prompt="a", max_new_tokens="12"), 422, "max_new_tokens", "integer")
    error(post(client, prompt="a", temperature=True), 422, "temperature")
    error(post(client, prompt="a", stop=[1]), 422, "stop[0]")
    error(post(client, prompt="a", strategy="magic"), 422, "strategy")
    err = error(post(client, prompt="a", bogus=1), 422, "bogus", "unknown field")
    assert err["code"] == "unknown_field"
    error(post(client, prompt="a", prompts=["b"]), 422, "prompt", "exactly one")
    error(post(client), 422, "prompt", "exactly one")
    error(post(client, prompts=[]), 422, "prompts")
    error(post(client, prompt="a", max_new_tokens=-1), 422, "max_new_tokens")


def test_model_required_when_several_are_loaded(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"prompt": "a"})
    error(r, 422, "model", "tiny", "tiny-gru")


@pytest.mark.parametrize("name", ["nope", "../tiny", "tiny/../tiny", "/etc/passwd", "..", ".", "tiny\x00"])
def test_unknown_model_is_404_and_never_a_path(client: TestClient, name: str) -> None:
    for path in ("/v1/generate", "/v1/completions", "/v1/perplexity"):
        body = {"model": name, "prompt": "a"} if path != "/v1/perplexity" else {"model": name, "text": "a"}
        err = error(client.post(path, json=body), 404, "model", "not loaded")
        assert err["code"] == "model_not_found"


def test_malformed_bodies_are_400(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    error(client.post("/v1/generate", content=b"{not json", headers=headers), 400, None, "not valid JSON")
    error(client.post("/v1/generate", content=b'{"prompt": "\xff\xfe"}', headers=headers), 400, None)
    error(client.post("/v1/generate", content=b"", headers=headers), 422, None, "required")


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    error(client.get("/v2/nothing"), 404, None, "/v2/nothing")
    error(client.get("/v1/generate"), 405, None, "GET")


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    err = error(client.post("/v1/generate", json={"prompt": "a" * 5000}), 413, None, "4096", "max_body_bytes")
    assert err["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is checked while streaming in
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    error(client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"}), 413, None,
          "max_body_bytes")


def rejected(client: TestClient, reason: str) -> float:
    """``lmforge_rejected_total{reason=...}`` from ``/metrics``."""
    m = re.search(rf'lmforge_rejected_total{{reason="{reason}"}} ([0-9.]+)', client.get("/metrics").text)
    return float(m.group(1)) if m else 0.0


def test_a_body_over_the_limit_is_counted_and_any_method_gets_the_error_shape(client: TestClient) -> None:
    before = rejected(client, "body_too_large")
    client.post("/v1/generate", json={"prompt": "a" * 5000})  # declared Content-Length
    client.post("/v1/perplexity", content=iter([b'{"text": "', b"a" * 5000, b'"}']),
                headers={"content-type": "application/json"})  # counted while streaming in
    assert rejected(client, "body_too_large") == before + 2
    for method, path in (("GET", "/v1/generate"), ("POST", "/nowhere"), ("GET", "/health")):
        r = client.request(method, path, content=b"x" * 5000)
        err = error(r, 413, None, "4096", "max_body_bytes")
        assert err["code"] == "body_too_large" and r.headers["x-request-id"]


def test_no_models_means_503(tmp_path: Path) -> None:
    with client_for(test_settings(tmp_path)) as c:
        r = c.get("/ready")
        error(r, 503, None, "no model")
        assert r.headers["retry-after"] == "1"
        assert c.get("/health").status_code == 200
        r = c.post("/v1/generate", json={"prompt": "a"})
        error(r, 503, None)
        assert "retry-after" in r.headers
        assert c.get("/v1/models").json() == {"object": "list", "data": []}


def test_timeout_is_504(checkpoints: Path) -> None:
    with client_for(test_settings(checkpoints, models=["tiny"], request_timeout_s=0.05, max_new_tokens=5000)) as c:
        r = c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 5000, "stop_at_eos": False})
        err = error(r, 504, None, "request_timeout_s")
        assert err["code"] == "timeout"
        scheduler = c.app.state.registry.models["tiny"].scheduler
        deadline = time.monotonic() + 5
        while scheduler.depth and time.monotonic() < deadline:  # the timed-out request was cancelled
            time.sleep(0.01)
        assert scheduler.depth == 0


def test_queue_full_is_429_with_retry_after(checkpoints: Path) -> None:
    with client_for(test_settings(checkpoints, models=["tiny"], max_queue=1)) as c:
        scheduler = c.app.state.registry.models["tiny"].scheduler
        slow = threading.Thread(target=c.post, args=("/v1/generate",),
                                kwargs={"json": {"prompt": "a", "max_new_tokens": 300, "stop_at_eos": False}})
        slow.start()
        deadline = time.monotonic() + 10
        while scheduler.depth == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1})
        err = error(r, 429, None, "max_queue")
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
        slow.join()
        assert c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1}).status_code == 200


class TestAuth:
    KEY = "s3cr3t-key"

    @pytest.fixture(scope="class")
    def client(self, checkpoints: Path) -> Iterator[TestClient]:
        with client_for(test_settings(checkpoints, models=["tiny"], api_key=self.KEY)) as c:
            yield c

    def test_every_route_but_health_needs_the_key(self, client: TestClient) -> None:
        routes = [("GET", "/v1/models"), ("GET", "/ready"), ("GET", "/metrics"), ("POST", "/v1/generate"),
                  ("POST", "/v1/generate/stream"), ("POST", "/v1/completions"), ("POST", "/v1/perplexity"),
                  ("GET", "/nonexistent")]
        for method, path in routes:
            r = client.request(method, path, json={"prompt": "a"})
            err = error(r, 401, None, "API key")
            assert err["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
            r = client.request(method, path, json={"prompt": "a"}, headers={"Authorization": "Bearer wrong"})
            error(r, 401, None, "invalid API key")
        assert client.get("/health").status_code == 200

    def test_the_key_opens_every_route(self, client: TestClient) -> None:
        h = {"Authorization": f"Bearer {self.KEY}"}
        assert client.get("/ready", headers=h).status_code == 200
        assert client.get("/metrics", headers=h).status_code == 200
        r = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2}, headers=h)
        assert r.status_code == 200
        assert client.get("/openapi.json", headers=h).status_code == 200
        assert client.get("/docs", headers=h).status_code == 200

    def test_the_schema_declares_the_bearer_scheme(self, client: TestClient) -> None:
        schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {self.KEY}"}).json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}]
        assert schema["paths"]["/health"]["get"]["security"] == []

    def test_every_operation_but_health_declares_the_key(self, client: TestClient) -> None:
        schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {self.KEY}"}).json()
        security = {(path, method): op.get("security") for path, ops in schema["paths"].items()
                    for method, op in ops.items()}
        assert security.pop(("/health", "get")) == []
        assert security and all(s == [{"bearer": []}] for s in security.values()), security
        assert schema["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the server's LMFORGE_API_KEY"}}

    def test_only_the_public_paths_are_open(self, client: TestClient) -> None:
        from service.deps import PUBLIC_PATHS

        schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {self.KEY}"}).json()
        operations = [(m.upper(), path) for path, ops in schema["paths"].items() for m in ops]
        operations += [("GET", "/"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")]
        open_paths = {path for method, path in operations if client.request(method, path).status_code != 401}
        assert open_paths == PUBLIC_PATHS

    def test_the_docs_are_public_and_load(self, client: TestClient) -> None:
        """A browser cannot send the key with the docs pages' own requests: they are public (they
        hold no data), and Swagger UI's Authorize button takes the key for the calls it makes."""
        r = client.get("/redoc")
        assert r.status_code == 200 and "redoc" in r.text.lower() and "/openapi.json" in r.text
        r = client.get("/docs")
        assert "swagger-ui" in r.text and "/openapi.json" in r.text
        assert client.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]

    def test_without_the_key_errors_before_the_route_are_401(self, client: TestClient) -> None:
        h = {"content-type": "application/json"}
        error(client.post("/v1/generate", content=b"{not json", headers=h), 401, None, "API key")
        error(client.post("/v1/generate", content=b'{"prompt": "\xff"}', headers=h), 401, None, "API key")
        error(client.get("/v1/generate"), 401, None, "API key")  # a 405 for whoever has the key
        r = client.post("/v1/generate", json={"prompt": "a" * 300_000})  # over the default limit
        assert r.status_code in (401, 413) and "error" in r.json()
        chunks = iter([b'{"prompt": "', b"a" * 300_000, b'"}'])
        r = client.post("/v1/generate", content=chunks, headers=h)
        assert r.status_code in (401, 413) and "error" in r.json()

    def test_refusals_are_counted(self, client: TestClient) -> None:
        def count() -> float:
            text = client.get("/metrics", headers={"Authorization": f"Bearer {self.KEY}"}).text
            m = re.search(r'lmforge_rejected_total{reason="unauthorized"} ([0-9.]+)', text)
            return float(m.group(1)) if m else 0.0

        before = count()
        client.get("/ready")
        client.get("/nowhere", headers={"Authorization": "Bearer nope"})
        assert count() == before + 2

    def test_a_prefix_or_other_scheme_is_refused(self, client: TestClient) -> None:
        for value in (f"Bearer {self.KEY[:-1]}", f"Bearer {self.KEY}x", self.KEY, f"Basic {self.KEY}",
                      f"bearer  {self.KEY}"):
            assert client.get("/ready", headers={"Authorization": value}).status_code == 401

    def test_the_key_never_reaches_the_logs(self, client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG):
            client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1},
                        headers={"Authorization": f"Bearer {self.KEY}"})
            client.get("/ready", headers={"Authorization": f"Bearer {self.KEY}-wrong"})
        assert caplog.records
        assert self.KEY not in caplog.text
