"""Every route the app mounts: the wire dialects, one folder each, and the system routes, each declared once
(server.apis.endpoint) for both the router and /openapi.json; then the pages. A handler parses the request, calls
one service function and builds the response in its dialect's format."""

from starlette.routing import BaseRoute

from server.adapters import routes as adapters
from server.apis import pages, system
from server.apis.anthropic import routes as anthropic
from server.apis.codeface import seed
from server.apis.codeface.conversations import routes as conversations
from server.apis.codeface.identity import routes as identity
from server.apis.endpoint import Endpoint
from server.apis.openai import routes as openai
from server.apis.openai.conversations import routes as openai_conversations
from server.apis.openai.responses import routes as responses
from server.apis.openai.responses import store_routes as stored_responses

ENDPOINTS: tuple[Endpoint, ...] = (*openai.endpoints, *responses.endpoints, *stored_responses.endpoints,
                                   *openai_conversations.endpoints, *anthropic.endpoints, *conversations.endpoints,
                                   *seed.endpoints, *identity.endpoints, *adapters.endpoints,
                                   *system.endpoints)


def all_routes() -> list[BaseRoute]:
    return [*(endpoint.route() for endpoint in ENDPOINTS), *pages.routes(ENDPOINTS)]
