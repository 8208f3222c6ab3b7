"""What the app holds (settings, engine, database, services), with typed accessors for route handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from engine import EngineClient
from server.adapters.catalog import ModelCatalog
from server.adapters.service import AdapterService
from server.apis.anthropic.serving import Messages
from server.apis.openai.chat_completions.serving import ChatCompletions
from server.apis.openai.completions.serving import Completions
from server.apis.openai.conversations.service import OpenAIConversations
from server.apis.openai.responses.background import BackgroundResponses
from server.apis.openai.responses.serving import Responses
from server.apis.openai.responses.store import ResponseStore
from server.apis.openai.tokenize.serving import Tokenization
from server.conversations.registry import Registry
from server.conversations.service import ConversationService
from server.exceptions import AuthenticationFailed
from server.generation.generator import Generator
from server.lifecycle import Lifecycle
from server.security.auth import Principal
from server.security.identity import IdentityService
from server.security.operator import OperatorEndpoints
from server.security.ratelimit import RateLimits
from server.settings import Settings
from storage import Database

PRINCIPAL = "principal"


@dataclass(frozen=True, slots=True)
class AppServices:
    settings: Settings
    engine: EngineClient
    # The base model and its LoRA adapters (what a request's `model` may name), and the adapters as state.
    models: ModelCatalog
    adapters: AdapterService
    database: Database
    limits: RateLimits
    registry: Registry
    generator: Generator
    lifecycle: Lifecycle
    chat: ChatCompletions
    messages: Messages
    completions: Completions
    responses: Responses
    tokenization: Tokenization
    conversations: ConversationService
    # OpenAI's Conversations API and the Responses API's stored state, over the same conversations.
    openai_conversations: OpenAIConversations
    response_store: ResponseStore
    background_responses: BackgroundResponses
    identity: IdentityService
    operator: OperatorEndpoints


def services(request: Request) -> AppServices:
    held: AppServices = request.app.state.services
    return held


def principal_of(request: Request) -> Principal:
    """The caller, as the access middleware identified it (every route outside the open paths has one)."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL)
    if principal is None:
        raise AuthenticationFailed("this route needs credentials")
    return principal


def request_state(request: Request) -> dict[str, Any]:
    """The per-request dict the access log reads (token usage lands there)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state
