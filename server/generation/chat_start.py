"""The start of a chat generation, whatever the dialect: the caller's limits before any work, the cache salt, the
prompt rendered by the engine, admission and the engine's first refusal, all before a byte of the answer."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from engine import Adapter, ChatInput, EngineClient, InvalidRequestError, PromptTooLongError
from server.generation.generator import Generation, Generator
from server.generation.refusals import engine_refusal
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.telemetry.tracing import tracer


async def start_chat(engine: EngineClient, generator: Generator, salter: CacheSalter, principal: Principal | None,
                     chat: ChatInput, *, request_id: str, choices: int, priority: int, min_tokens: int,
                     usage_sink: MutableMapping[str, Any], messages_param: str = "messages",
                     adapter: Adapter | None = None) -> Generation:
    """A started generation, or the domain error that refuses it (InvalidRequest naming `messages_param` for the
    engine's refusal of the messages; the limits' and admission's own errors). `adapter`: the LoRA adapter the
    request's model names (None: the base model)."""
    await generator.precheck(principal, choices=choices, priority=priority, min_tokens=min_tokens)
    salter.apply(chat.fields, principal)
    try:
        with tracer.start_as_current_span("prompt.build"):
            prepared = await engine.prepare_chat(chat, request_id)
        prepared.adapter = adapter
        return await generator.start(principal, prepared, usage_sink=usage_sink)
    except (PromptTooLongError, InvalidRequestError) as exc:
        raise engine_refusal(exc, messages_param) from None
