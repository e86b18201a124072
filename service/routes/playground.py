"""``GET /``: the playground, one self-contained HTML page that drives the public API.

The page (``service/static/playground.html``) has its CSS and JavaScript inline: no build step,
no CDN, nothing fetched but the page itself and the ``/v1/`` endpoints it calls. It holds no
data, so it is served without the API key (``PUBLIC_PATHS``); when the server has a key the page
asks for it, keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer``.

The Content-Security-Policy allows exactly the inline script and style of this page (by their
SHA-256) and connections to this origin only, so an injected script could neither run nor send
the key anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["playground"])

PAGE = ("static", "playground.html")


def _hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions for the content of every inline ``<tag>`` element."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies]


@cache
def page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and its response headers (read once, on first request)."""
    html = resources.files("service").joinpath(*PAGE).read_text(encoding="utf-8")
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(_hashes(html, 'script'))}",
        f"style-src {' '.join(_hashes(html, 'style'))}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return html.encode("utf-8"), headers


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page (public: it contains no data; the API calls it makes need the key)."""
    body, headers = page()
    return HTMLResponse(body, headers=headers)
