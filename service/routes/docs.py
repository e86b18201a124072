"""``GET /openapi.json``, ``/docs`` (Swagger UI) and ``/redoc``: the API's schema and its pages.

FastAPI's own routes for these are turned off (``docs_url=None, openapi_url=None`` in
``service.app``) so that these, included like every other non-public router, need the API key when
the server has one. The pages load their JavaScript and CSS from the URLs below (FastAPI's
defaults, a CDN for now); pointing them at files this server serves itself changes only these
constants.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

SWAGGER_JS_URL = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
SWAGGER_CSS_URL = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
REDOC_JS_URL = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"
FAVICON_URL = "https://fastapi.tiangolo.com/img/favicon.png"

OPENAPI_PATH = "/openapi.json"

router = APIRouter(include_in_schema=False)


def _schema_url(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + OPENAPI_PATH


@router.get(OPENAPI_PATH)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI schema (FastAPI builds it once, from the routes)."""
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_schema_url(request), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=SWAGGER_JS_URL, swagger_css_url=SWAGGER_CSS_URL, swagger_favicon_url=FAVICON_URL,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_schema_url(request), title=f"{request.app.title} - ReDoc",
        redoc_js_url=REDOC_JS_URL, redoc_favicon_url=FAVICON_URL,
    )
