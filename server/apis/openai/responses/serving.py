"""OpenAI's Responses API: the context a response continues (the state: a previous response's chain or a
conversation), a chat generation started on the one generation path, then collected into a Response object or
framed as OpenAI's semantic events; the state keeps what ended. input_tokens renders the prompt alone."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from engine import EngineClient, InvalidRequestError, PromptTooLongError
from server.adapters.catalog import ModelCatalog
from server.apis.openai.responses.output import Event, OutputBuilder
from server.apis.openai.responses.protocol import InputTokensRequest, Prompt, ResponsesRequest
from server.apis.openai.responses.state import RESPONSE_ID_PREFIX, Item, ResponseState
from server.errors import status_of
from server.generation.chat_start import start_chat
from server.generation.generator import STREAM_ERRORS, Generation, Generator
from server.generation.heartbeats import with_heartbeats
from server.generation.refusals import engine_refusal, served_model
from server.generation.stream_accounting import StreamAccounting
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.sse import HEARTBEAT, EventStream, frame

logger = logging.getLogger(__name__)

LENGTH = "length"
INPUT = "input"
# A failed response's error code, by the status the error would have had as an answer (OpenAI's codes).
FAILED_CODES: dict[int, str] = {HTTPStatus.BAD_REQUEST: "invalid_prompt",
                                 HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_exceeded"}
SERVER_ERROR = "server_error"
MAX_OUTPUT_TOKENS = "max_output_tokens"
# A response's statuses before it ends (a background one is queued first).
RUNNING = ("queued", "in_progress")

@dataclass(slots=True)
class StartedResponse:
    """A started response: its generation, its request and owner, and what its body echoes."""

    generation: Generation
    request: ResponsesRequest
    owner: uuid.UUID
    response_id: str
    model: str
    created_at: int = field(default_factory=lambda: int(time.time()))

    async def close(self) -> None:
        await self.generation.close()


def usage(prompt_tokens: int, output_tokens: int, cached_tokens: int | None, reasoning_tokens: int) -> dict[str, Any]:
    # cache_write_tokens: vLLM fills its prefix cache as it goes, with no charge of its own to report.
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens or 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + output_tokens}


def echoed(request: ResponsesRequest) -> dict[str, Any]:
    """The request's fields that a Response object carries."""
    conversation = request.conversation_id
    text = ({"format": {"type": "text"}} if request.text is None or request.text.format is None
            else {"format": {key: value for key, value in {
                "type": request.text.format.type, "name": request.text.format.name,
                "schema": request.text.format.schema, "description": request.text.format.description,
                "strict": request.text.format.strict}.items() if value is not None}})
    reasoning = request.reasoning
    return {
        "instructions": request.instructions, "metadata": request.metadata or {},
        "tools": [tool.echoed() for tool in request.function_tools()],
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "temperature": request.temperature, "top_p": request.top_p, "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "conversation": {"id": conversation} if conversation is not None else None, "store": request.store,
        "text": text, "truncation": request.truncation or "disabled",
        "parallel_tool_calls": request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        "user": request.user, "safety_identifier": request.safety_identifier,
        "prompt_cache_key": request.prompt_cache_key, "background": bool(request.background), "service_tier": "default",
        "top_logprobs": request.top_logprobs, "max_tool_calls": None,
        "reasoning": ({"effort": reasoning.effort, "summary": reasoning.summary} if reasoning is not None else None),
    }


class Responses:
    def __init__(self, engine: EngineClient, models: ModelCatalog, generator: Generator, heartbeat_s: float,
                 salter: CacheSalter, state: ResponseState) -> None:
        self.engine = engine
        self.models = models
        self.generator = generator
        self.heartbeat_s = heartbeat_s
        self.salter = salter
        self.state = state

    async def context(self, request: Prompt, owner: uuid.UUID) -> list[Item]:
        if request.previous_response_id is None and request.conversation_id is None:
            return []
        return await self.state.context(owner, previous_response_id=request.previous_response_id,
                                        conversation_id=request.conversation_id)

    async def start(self, request: ResponsesRequest, principal: Principal, usage_sink: MutableMapping[str, Any],
                    request_id: str) -> StartedResponse:
        """Everything that can refuse the request happens here, before a byte of the response is sent."""
        served = served_model(self.models, principal, request.model)
        context = await self.context(request, principal.user_id)
        chat = request.chat_input(context, self.engine.max_model_len)
        generation = await start_chat(self.engine, self.generator, self.salter, principal, chat,
                                      request_id=request_id, choices=1, priority=request.priority or 0,
                                      min_tokens=request.max_output_tokens or 0, usage_sink=usage_sink,
                                      messages_param=INPUT, adapter=served.adapter)
        return StartedResponse(generation, request, principal.user_id, RESPONSE_ID_PREFIX + uuid.uuid4().hex,
                               served.name)

    def body(self, started: StartedResponse, status: str, output: list[dict[str, Any]],
             reasoning_tokens: int = 0, error: dict[str, Any] | None = None,
             incomplete_reason: str = MAX_OUTPUT_TOKENS) -> dict[str, Any]:
        """The Response object; usage once it has ended."""
        tally = started.generation.tally
        ended = status not in RUNNING
        return {"id": started.response_id, "object": "response", "created_at": started.created_at,
                "status": status, "error": error, "model": started.model, "output": output,
                "incomplete_details": {"reason": incomplete_reason} if status == "incomplete" else None,
                "usage": usage(tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens, reasoning_tokens)
                if ended else None, **echoed(started.request)}

    async def save(self, started: StartedResponse, body: dict[str, Any]) -> None:
        request = started.request
        await self.state.save(started.owner, body, request.input_items(), store=request.store,
                              conversation_id=request.conversation_id)

    def status(self, started: StartedResponse) -> str:
        return "incomplete" if LENGTH in started.generation.tally.finish_reasons else "completed"

    async def collect(self, started: StartedResponse) -> dict[str, Any]:
        """The whole response as one body, kept by the state before it is answered."""
        builder = OutputBuilder(started.request.wants_logprobs)
        try:
            async for step in started.generation:
                for choice in step.choices:
                    builder.add(choice)
        except InvalidRequestError as exc:
            raise engine_refusal(exc, INPUT) from None
        status = self.status(started)
        builder.finish(status == "incomplete")
        body = self.body(started, status, builder.output, builder.reasoning_tokens)
        await self.save(started, body)
        return body

    async def events(self, started: StartedResponse) -> EventStream:
        """response.created and response.in_progress at once, keep-alive comments while the request waits in the
        engine's queue, the output items' events as the tokens come, then response.completed (or .incomplete),
        sent once the state has kept the response. An error after the first event is response.failed."""
        builder = OutputBuilder(started.request.wants_logprobs)
        sequence = 0

        def framed(events: list[Event]) -> bytes:
            nonlocal sequence
            out = b""
            for name, data in events:
                out += frame({"type": name, **data, "sequence_number": sequence}, event=name)
                sequence += 1
            return out

        async with StreamAccounting(started.model, started.close):
            head = self.body(started, "in_progress", [])
            yield framed([("response.created", {"response": head}), ("response.in_progress", {"response": head})])
            try:
                async for step in with_heartbeats(started.generation, self.heartbeat_s):
                    if step is None:
                        yield HEARTBEAT
                        continue
                    events = [event for choice in step.choices for event in builder.add(choice)]
                    if events:
                        yield framed(events)
                status = self.status(started)
                done = builder.finish(status == "incomplete")
                body = self.body(started, status, builder.output, builder.reasoning_tokens)
                await self.save(started, body)
            except STREAM_ERRORS as exc:
                yield framed(self.failed(started, builder, exc))
            except Exception as exc:  # e.g. the state could not keep it: the client learns it, the log has the cause
                logger.exception("a streamed response failed after its first event")
                yield framed(self.failed(started, builder, exc))
            else:
                yield framed([*done, (f"response.{status}", {"response": body})])

    def failed(self, started: StartedResponse, builder: OutputBuilder, error: Exception) -> list[Event]:
        events = builder.finish(True)
        error_body = {"code": FAILED_CODES.get(status_of(error), SERVER_ERROR), "message": str(error)}
        return [*events, ("response.failed", {"response": self.body(started, "failed", builder.output,
                                                                    builder.reasoning_tokens, error_body)})]

    async def input_tokens(self, request: InputTokensRequest, principal: Principal) -> dict[str, Any]:
        """The prompt's tokens, rendered exactly as a response with this input would render it."""
        served_model(self.models, principal, request.model)
        context = await self.context(request, principal.user_id)
        try:
            prompt = await self.engine.render(request.chat_input(context))
        except (PromptTooLongError, InvalidRequestError) as exc:
            raise engine_refusal(exc, INPUT) from None
        return {"object": "response.input_tokens", "input_tokens": prompt.num_tokens}
