"""``/docs`` and ``/redoc`` load with no network: every file the pages ask for is served by this
server itself (``service.routes.docs``), none from a CDN; and they are public."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings

KEY = "docs-key"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("docs")
    make_checkpoint(root / "tiny")
    with client_for(test_settings(root, api_key=KEY)) as c:
        yield c


def references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize(("page", "kinds"), [("/docs", {"javascript", "css", "png"}), ("/redoc", {"javascript", "png"})])
def test_docs_pages_need_nothing_from_elsewhere(client: TestClient, page: str, kinds: set[str]) -> None:
    r = client.get(page)  # no key: the pages are public
    assert r.status_code == 200
    assert "https://" not in r.text and "http://" not in r.text, "the page must not load anything remote"
    refs = references(r.text)
    assert refs and all(ref.startswith("/docs/assets/") for ref in refs), refs
    seen = set()
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        kind = asset.headers["content-type"].split(";")[0].split("/")[-1]
        seen.add("css" if kind == "css" else "png" if kind == "png" else "javascript")
        assert len(asset.content) > 1000, ref
    assert seen == kinds
    assert "/openapi.json" in r.text and client.get("/openapi.json").status_code == 200


def test_only_the_shipped_asset_files_are_served(client: TestClient) -> None:
    assert client.get("/docs/assets/../settings.py").status_code in (401, 404)
    assert client.get("/docs/assets/nothing.js").status_code in (401, 404)
    import fastapi_offline

    assert (Path(fastapi_offline.__file__).parent / "static" / "swagger-ui-bundle.js").is_file()
