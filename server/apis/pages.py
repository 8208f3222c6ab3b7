"""The pages: GET / (the chat page, the reference client of the conversations API), GET /docs (Swagger UI over
GET /openapi.json, OpenAPI 3.1 generated from the routes' declarations), and their static files under /static (front-end
dependencies vendored and pinned: the pages work offline)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server.apis.endpoint import Endpoint
from server.openapi.document import openapi_document
from server.state import services
from server.streaming import RouteResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/static/"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"


async def docs(request: Request) -> RouteResponse:
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


@cache
def chat_html(auth_enabled: bool) -> bytes:
    """The page says whether auth is on: with it on and no credentials yet, the page shows its sign-in at once
    instead of probing with a request bound to fail (a 401 the browser logs as an error on every first load)."""
    html = (STATIC_DIR / "chat" / "index.html").read_text()
    return html.replace("<html ", f'<html data-auth="{"on" if auth_enabled else "off"}" ', 1).encode()


async def chat_page(request: Request) -> RouteResponse:
    return Response(chat_html(services(request).settings.auth_enabled), media_type="text/html")


def routes(documented: Sequence[Endpoint]) -> list[BaseRoute]:
    """The pages, /openapi.json describing the `documented` endpoints (built when first asked for)."""

    @cache
    def document() -> bytes:
        return msgspec.json.encode(openapi_document(package_version("codeface"), documented))

    async def openapi(request: Request) -> RouteResponse:
        return Response(document(), media_type="application/json")

    return [
        Route("/", chat_page, methods=["GET"]),
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
        Route(DOCS_PATH, docs, methods=["GET"]),
        Mount(STATIC_PREFIX.rstrip("/"), app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
