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

from server.openapi import openapi_document
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


async def chat_page(request: Request) -> RouteResponse:
    return FileResponse(STATIC_DIR / "chat" / "index.html", media_type="text/html")


routes: list[BaseRoute] = [
    Route("/", chat_page, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route(DOCS_PATH, docs, methods=["GET"]),
    Mount(STATIC_PREFIX.rstrip("/"), app=StaticFiles(directory=STATIC_DIR), name="static"),
]
