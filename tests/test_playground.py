"""The playground page (``GET /``): served publicly, self-contained, talking only to ``/v1/``.

The page needs no model to be served, so these apps load none. The browser test
(``test_playground_browser.py``, slow) drives the page against a real server.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import test_settings

from service.app import create_app
from service.deps import PUBLIC_PATHS

KEY = "playground-key"
API_PATHS_USED = {"/v1/models", "/v1/generate/stream", "/v1/perplexity"}


def _client(tmp_path: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(test_settings(tmp_path, **overrides), loader=lambda registry: None))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _client(tmp_path_factory.mktemp("none"), api_key=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def html(client: TestClient) -> str:
    return client.get("/").text


def test_page_is_html(client: TestClient, html: str) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<title>lmforge playground</title>" in html
    for element in ('id="model"', 'id="prompt"', 'id="generate"', 'id="output"', 'id="score-text"', 'id="ppl"',
                    'id="api-key"', 'value="greedy"', 'value="sample"', 'value="beam"'):
        assert element in html
    for option in ("max_new_tokens", "temperature", "top_k", "top_p", "num_beams", "seed", "stop"):
        assert f'name="{option}"' in html


def test_page_is_public_but_the_api_still_needs_the_key(client: TestClient) -> None:
    assert "/" in PUBLIC_PATHS
    assert client.get("/").status_code == 200
    for path in ("/v1/models", "/ready", "/index.html", "/v1/"):
        assert client.get(path).status_code == 401, path
    assert client.post("/", json={}).status_code == 405  # public, yet only GET exists there
    schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "/" not in schema["paths"]  # a page, not part of the API


def test_page_is_served_without_a_key_configured(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        r = c.get("/")
        assert r.status_code == 200 and "lmforge playground" in r.text


def test_no_external_references(html: str) -> None:
    assert not re.search(r"https?:", html, flags=re.IGNORECASE), "no http(s) URL of any host"
    assert "//" not in re.sub(r"<script>.*?</script>", "", html, flags=re.DOTALL), "no protocol-relative URL"
    assert not re.search(r"@import|url\(", html), "no stylesheet or font fetched by CSS"
    # Nothing is loaded by markup: the only src/href is the empty inline favicon.
    refs = re.findall(r"""\b(?:src|href|action|srcset|poster|data)\s*=\s*["']([^"']*)["']""", html)
    assert refs == ["data:,"]
    assert "<iframe" not in html and "<object" not in html and "<embed" not in html
    # One inline script and one inline style, nothing from elsewhere.
    assert re.findall(r"<script[^>]*>", html) == ["<script>"]
    assert re.findall(r"<style[^>]*>", html) == ["<style>"]
    assert "<link" not in html.replace('<link rel="icon" href="data:,">', "")


def test_references_only_public_api_paths(client: TestClient, html: str) -> None:
    script = re.search(r"<script>(.*?)</script>", html, flags=re.DOTALL).group(1)
    paths = set(re.findall(r"""["'`](/[^"'`\s]*)["'`]""", script))
    assert paths == API_PATHS_USED
    schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "get" in schema["paths"]["/v1/models"]
    assert "post" in schema["paths"]["/v1/generate/stream"] and "post" in schema["paths"]["/v1/perplexity"]
    assert not re.search(r"\bfetch\(\s*[\"'`]", script), "every request goes through API.<name>"
    assert "new EventSource" not in script and "XMLHttpRequest" not in script and "WebSocket" not in script


def test_content_security_policy_allows_exactly_the_inline_code(client: TestClient, html: str) -> None:
    csp = dict(part.strip().split(" ", 1) for part in client.get("/").headers["content-security-policy"].split(";"))

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL).group(1)
        return f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"

    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == digest("script")
    assert csp["style-src"] == digest("style")
    assert csp["connect-src"] == "'self'"
    assert "unsafe" not in " ".join(csp.values())
    # Inline handlers and style attributes would be blocked by this policy, so the page has none.
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)
    assert not re.search(r"<[^>]*\sstyle\s*=", html)


def test_page_requests_are_counted_under_their_route(client: TestClient) -> None:
    client.get("/")
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert re.search(r'lmforge_requests_total\{method="GET",route="/",status="200"\} [1-9]', metrics)
