"""``/_ui``: the web page for a person, three static files shipped in the package.

The page is served to anyone (it holds no data); every API call it makes carries the token the
person typed, so the node's access rules apply to it as to any client. Its answers carry a
strict ``Content-Security-Policy``: the page runs only its own script and style, so a stored
value that slipped into it as markup still could not run.
"""

from __future__ import annotations

from pathlib import Path

from twisted.web.server import Request

from navistore.web.errors import ApiError
from navistore.web.responses import Response

__all__ = ["UI_FILES", "UI_POLICY", "ui_page"]

#: What the page may load and run: only what comes from the node itself.
UI_POLICY = b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

_HERE = Path(__file__).with_name("ui")

#: The files the page is made of, by the last segment of their path, with their content type.
UI_FILES: dict[str, tuple[str, bytes]] = {
    "": ("index.html", b"text/html; charset=utf-8"),
    "index.html": ("index.html", b"text/html; charset=utf-8"),
    "ui.js": ("ui.js", b"text/javascript; charset=utf-8"),
    "ui.css": ("ui.css", b"text/css; charset=utf-8"),
}


async def ui_page(request: Request) -> Response:
    """Answer ``/_ui``, ``/_ui/`` or one of the page's files under ``/_ui/``."""
    path = request.path.decode("latin-1")
    name = path[len("/_ui") :].lstrip("/")
    found = UI_FILES.get(name)
    if found is None:
        raise ApiError(404, "not_found", f"the page has no file {name!r}")
    filename, content_type = found
    body = (_HERE / filename).read_bytes()
    headers = {
        b"Content-Type": content_type,
        b"Content-Security-Policy": UI_POLICY,
        b"X-Content-Type-Options": b"nosniff",
        b"Cache-Control": b"no-cache",
    }
    return Response(200, body, headers)
