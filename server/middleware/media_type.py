"""Pure ASGI middleware: 415 for a request body that says it is not JSON (the form routes: not a form). A browser
page sends text/plain or a form to any site without asking first (no CORS preflight); JSON it cannot."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response

UNSUPPORTED_MEDIA_TYPE = 415
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
JSON_TYPE = "application/json"


def media_type(header: bytes) -> str:
    return header.decode("latin-1").partition(";")[0].strip().lower()


def is_json(kind: str) -> bool:
    return kind == JSON_TYPE or (kind.startswith("application/") and kind.endswith("+json"))


class MediaTypeMiddleware:
    """Without a Content-Type a body is read as JSON, as FastAPI does (no browser sends a cross-site body that way
    without an Origin, which HostOriginMiddleware checks)."""

    def __init__(self, app: ASGIApp, *, form_paths: frozenset[str]) -> None:
        self.app = app
        self.form_paths = form_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope["headers"] if name == b"content-type"), None)
        if header is None:
            await self.app(scope, receive, send)
            return
        kind = media_type(header)
        form = scope["path"] in self.form_paths
        if (kind in FORM_TYPES) if form else is_json(kind):
            await self.app(scope, receive, send)
            return
        wanted = "a form (application/x-www-form-urlencoded)" if form else "JSON (Content-Type: application/json)"
        response = error_response(UNSUPPORTED_MEDIA_TYPE, f"the body is {kind or 'of no type'}: send {wanted}",
                                  path=scope["path"], param="Content-Type")
        await response(scope, receive, send)
