"""``GET /docs`` (Swagger UI) and ``/redoc``: the API's pages, working offline.

FastAPI serves ``/openapi.json`` itself (through ``service.app``'s ``openapi`` override, with
the live limits); its own pages are turned off (``docs_url=None, redoc_url=None``) and served
here following FastAPI's self-hosting recipe: the pages' JavaScript, CSS and icon come from this
server (``/docs/assets/``), from the files the ``fastapi-offline``
package ships, not from a CDN, so the docs load on a machine with no network.

They are public, like the playground: the schema describes the API and holds no data, and a
browser cannot send the key with the page's own request for it. With a key set, Swagger UI's
*Authorize* button takes it for the calls made from the page.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.deps import DOCS_ASSETS

SWAGGER_JS_URL = f"{DOCS_ASSETS}/swagger-ui-bundle.js"
SWAGGER_CSS_URL = f"{DOCS_ASSETS}/swagger-ui.css"
REDOC_JS_URL = f"{DOCS_ASSETS}/redoc.standalone.js"
FAVICON_URL = f"{DOCS_ASSETS}/favicon.png"

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline'",  # each page starts its UI with an inline script
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",  # ReDoc's sidebar links a logo from its CDN: not fetched
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
])
"""The pages fetch from this server only, so nothing leaves the machine, network or not."""

router = APIRouter(include_in_schema=False)


def mount_assets(app: FastAPI) -> None:
    """Serve the Swagger UI and ReDoc files under ``DOCS_ASSETS``."""
    directory = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(directory)), name="docs-assets")


def _url(request: Request, path: str) -> str:
    return request.scope.get("root_path", "").rstrip("/") + path


def _local(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _local(get_swagger_ui_html(
        openapi_url=_url(request, request.app.openapi_url), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_url(request, SWAGGER_JS_URL), swagger_css_url=_url(request, SWAGGER_CSS_URL),
        swagger_favicon_url=_url(request, FAVICON_URL),
    ))


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _local(get_redoc_html(
        openapi_url=_url(request, request.app.openapi_url), title=f"{request.app.title} - ReDoc",
        redoc_js_url=_url(request, REDOC_JS_URL), redoc_favicon_url=_url(request, FAVICON_URL),
        with_google_fonts=False,
    ))
