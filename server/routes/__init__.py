"""HTTP routes, one module per API area; each exports `routes`, mounted by server.app. A handler parses the
request, calls one service function and builds the response."""

from starlette.routing import BaseRoute

from server.routes import conversations, identity, openai, pages, seed, system, tokenize


def all_routes() -> list[BaseRoute]:
    return [*openai.routes, *tokenize.routes, *conversations.routes, *seed.routes, *identity.routes,
            *system.routes, *pages.routes]
