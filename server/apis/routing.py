"""Every route the app mounts: the wire dialects, one folder each, and the system routes. A handler parses the
request, calls one service function and builds the response in its dialect's format."""

from starlette.routing import BaseRoute

from server.apis import pages, system
from server.apis.anthropic import routes as anthropic
from server.apis.codeface import seed
from server.apis.codeface.conversations import routes as conversations
from server.apis.codeface.identity import routes as identity
from server.apis.openai import routes as openai


def all_routes() -> list[BaseRoute]:
    return [*openai.routes, *anthropic.routes, *conversations.routes, *seed.routes, *identity.routes, *system.routes,
            *pages.routes]
