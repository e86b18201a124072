"""The OpenAPI document states the live server's limits (``service.openapi``): what the schema
allows at its edge is accepted, one past it is refused, whatever the settings are."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings

LIMITS = {"max_new_tokens": 7, "max_num_beams": 3, "max_return_sequences": 2, "max_prompts": 3, "max_batch_rows": 8}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("schema")
    make_checkpoint(root / "tiny")
    with client_for(test_settings(root, **LIMITS)) as c:
        yield c


def prop(client: TestClient, model: str, field: str, kind: str) -> dict:
    p = client.get("/openapi.json").json()["components"]["schemas"][model]["properties"][field]
    return next(part for part in [p, *p.get("anyOf", ())] if part.get("type") == kind)


@pytest.mark.parametrize(("field", "kind", "key", "limit"), [
    ("max_new_tokens", "integer", "maximum", 7), ("num_beams", "integer", "maximum", 3),
    ("num_return_sequences", "integer", "maximum", 2), ("prompts", "array", "maxItems", 3),
])
def test_generate_bounds_are_the_settings(client: TestClient, field: str, kind: str, key: str, limit: int) -> None:
    assert prop(client, "GenerateRequest", field, kind)[key] == limit
    value = ["a"] * limit if kind == "array" else limit
    body = {"prompts": value} if field == "prompts" else {"prompt": "a", field: value}
    if field in ("num_beams", "num_return_sequences"):
        body.update(strategy="beam" if field == "num_beams" else "sample", max_new_tokens=2)
    assert client.post("/v1/generate", json=body).status_code == 200
    over = ["a"] * (limit + 1) if kind == "array" else limit + 1
    body = {**body, "prompts": over} if field == "prompts" else {**body, field: over}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422 and field in r.text


def test_strict_bounds_are_exclusive_in_the_schema(client: TestClient) -> None:
    assert prop(client, "GenerateRequest", "top_p", "number")["exclusiveMinimum"] == 0
    assert prop(client, "GenerateRequest", "min_p", "number")["exclusiveMaximum"] == 1
    assert client.post("/v1/generate", json={"prompt": "a", "top_p": 0}).status_code == 422
    assert client.post("/v1/generate", json={"prompt": "a", "min_p": 1}).status_code == 422
    assert prop(client, "CompletionRequest", "max_tokens", "integer")["maximum"] == 7
    assert prop(client, "CompletionRequest", "stop", "array")["maxItems"] == 4
    assert prop(client, "PerplexityRequest", "texts", "array")["maxItems"] == 3


def test_exactly_one_of_prompt_and_prompts_is_in_the_schema(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    assert [branch["required"] for branch in body["oneOf"]] == [["prompt"], ["prompts"]]
    assert client.post("/v1/generate", json={"prompt": "a", "prompts": ["b"]}).status_code == 422
    assert client.post("/v1/generate", json={"prompt": None, "prompts": ["b"], "max_new_tokens": 1}).status_code == 200
