"""The dashboard: one page at ``/`` and its assets at ``/static``, served by bagbot itself.

The page is a shell: a small script fetches everything from the ``/v1`` JSON API with the
token the user typed in (sent as ``Authorization: Bearer``, kept in the tab's
sessionStorage). With no cookie there is nothing a cross-site request could ride on, so no
CSRF surface; the strict Content-Security-Policy (no inline script, nothing from another
origin) narrows what an injection could do, and the script writes API text with
``textContent`` only. No build step and no CDN: the files under ``static/`` are what runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

import jinja2
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from bagbot_core.status import OrderStatus

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

#: Seconds between the page's automatic refreshes (the user can pause them).
REFRESH_SECONDS = 5

#: Only this origin's script, style, images and API; no frames, plugins or base tag. No form
#: may submit either: the script sends the token in a header, and should it fail to load, a
#: plain form submit would put the token into a URL.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))

#: On the page and its assets.
SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: Statuses a user may cancel (the page shows a Cancel button on them).
CANCELABLE = (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


class _StaticFiles(StaticFiles):
    """The assets, with the same protective headers as the page."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def _version() -> str:
    try:
        return importlib.metadata.version("bagbot-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return ""


def _asset_urls() -> dict[str, str]:
    """``name -> /static/name?v=<content hash>``: a changed file gets a new URL, so a
    browser never runs a cached script against a newer page."""
    urls = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            urls[path.name] = f"/static/{path.name}?v={digest}"
    return urls


def render_page() -> str:
    """The page's HTML (autoescaped: nothing in it comes from a request)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    urls = _asset_urls()
    return environment.get_template("dashboard.html").render(
        static_url=urls.__getitem__,
        version=_version(),
        refresh_seconds=REFRESH_SECONDS,
        statuses=[status.value for status in OrderStatus],
        cancelable=[status.value for status in CANCELABLE],
    )


def install(app: FastAPI) -> None:
    """Add ``GET /`` (the page) and mount ``/static`` (its script, style and icon)."""
    html = render_page()  # the same for every request: rendered once

    async def dashboard() -> HTMLResponse:
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                   "Cache-Control": "no-cache"}
        return HTMLResponse(html, headers=headers)

    app.add_api_route("/", dashboard, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse, name="dashboard")
    app.mount("/static", _StaticFiles(directory=STATIC), name="static")
