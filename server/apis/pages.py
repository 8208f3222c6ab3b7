"""The pages: GET / (the chat page, the reference client of the conversations API), GET /docs (Swagger UI over
GET /openapi.json, OpenAPI 3.1 generated from the schemas), and their static files under /static (front-end
dependencies vendored and pinned: the pages work offline)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from server.apis.openapi import openapi_document
from server.state import services
from server.streaming import RouteResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/static/"
DOCS_PATH = "/docs"


@cache
def openapi_json() -> bytes:
    return msgspec.json.encode(openapi_document(package_version("codeface")))


async def openapi(request: Request) -> RouteResponse:
    return Response(openapi_json(), media_type="application/json")


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


routes: list[BaseRoute] = [
    Route("/", chat_page, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route(DOCS_PATH, docs, methods=["GET"]),
    Mount(STATIC_PREFIX.rstrip("/"), app=StaticFiles(directory=STATIC_DIR), name="static"),
]
