"""Anthropic's Messages: start a chat generation on the one generation path, then collect it into a message body or
frame it as Anthropic's events (message_start, content blocks, message_delta, message_stop, ping while queued), as
vllm serve's /v1/messages frames them; count_tokens renders the prompt alone."""

from __future__ import annotations

import json
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from engine import ChoiceDelta, EngineClient, InvalidRequestError, PromptTooLongError
from server.adapters.catalog import ModelCatalog, ServedModel
from server.apis.anthropic.protocol import Conversation, CountTokensRequest, MessagesRequest
from server.apis.openai.chunks import StreamErrorFraming
from server.exceptions import InvalidRequest
from server.generation.chat_start import start_chat
from server.generation.generator import STREAM_ERRORS, Generation, Generator
from server.generation.heartbeats import with_heartbeats
from server.generation.refusals import engine_refusal, served_model
from server.generation.stream_accounting import StreamAccounting
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.sse import EventStream, frame

MESSAGE_ID_PREFIX = "msg_"
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
LENGTH = "length"
TOOL_CALLS = "tool_calls"


class StopReason(StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"


class Event(StrEnum):
    MESSAGE_START = "message_start"
    CONTENT_BLOCK_START = "content_block_start"
    CONTENT_BLOCK_DELTA = "content_block_delta"
    CONTENT_BLOCK_STOP = "content_block_stop"
    MESSAGE_DELTA = "message_delta"
    MESSAGE_STOP = "message_stop"
    ERROR = "error"


def stop_reason(finish_reason: str | None, matched: int | str | None, tool_used: bool) -> tuple[StopReason, str | None]:
    """Anthropic's stop_reason and stop_sequence, as vllm serve maps them: max_tokens wins, then a matched stop
    string, then a tool call."""
    if finish_reason == LENGTH:
        return StopReason.MAX_TOKENS, None
    if isinstance(matched, str) and not tool_used:
        return StopReason.STOP_SEQUENCE, matched
    if finish_reason == TOOL_CALLS or tool_used:
        return StopReason.TOOL_USE, None
    return StopReason.END_TURN, None


def usage(prompt_tokens: int, output_tokens: int, cached_tokens: int | None) -> dict[str, int]:
    """Anthropic counts input tokens read from the cache apart: input_tokens + cache_read_input_tokens is the
    prompt."""
    cached = cached_tokens or 0
    return {"input_tokens": prompt_tokens - cached, "output_tokens": output_tokens, "cache_read_input_tokens": cached}


def event(name: Event, data: dict[str, Any]) -> bytes:
    return frame({"type": name.value, **data}, event=name.value)


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the input object; an object cut short (max_tokens) is empty."""
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclass(slots=True)
class StartedMessage:
    """A started message: its generation and how to frame it."""

    generation: Generation
    request: MessagesRequest
    message_id: str
    model: str

    async def close(self) -> None:
        await self.generation.close()


@dataclass(slots=True)
class Outcome:
    """What ends a message: the engine's finish and stop reasons, and whether a tool was called."""

    finish_reason: str | None = None
    matched: int | str | None = None
    tool_used: bool = False

    def add(self, choice: ChoiceDelta) -> None:
        if choice.tool_calls:
            self.tool_used = True
        if choice.finish_reason is not None:
            self.finish_reason, self.matched = choice.finish_reason, choice.stop_reason

    def stop(self) -> dict[str, Any]:
        reason, sequence = stop_reason(self.finish_reason, self.matched, self.tool_used)
        return {"stop_reason": reason.value, "stop_sequence": sequence}


@dataclass(slots=True)
class BlockFramer:
    """The content blocks of a streamed message, one open at a time: thinking, text, tool_use. Text after a tool
    call is held and sent as a block of its own at the end, as vllm serve does."""

    index: int = 0
    open: str | None = None
    tool_ids: dict[int, str] = field(default_factory=dict)
    held_text: list[str] = field(default_factory=list)

    def start(self, block: dict[str, Any]) -> bytes:
        self.open = block["type"]
        return event(Event.CONTENT_BLOCK_START, {"index": self.index, "content_block": block})

    def delta(self, delta: dict[str, Any]) -> bytes:
        return event(Event.CONTENT_BLOCK_DELTA, {"index": self.index, "delta": delta})

    def stop(self) -> bytes:
        if self.open is None:
            return b""
        framed = b""
        if self.open == "thinking":
            framed += self.delta({"type": "signature_delta", "signature": uuid.uuid4().hex})
        self.open = None
        framed += event(Event.CONTENT_BLOCK_STOP, {"index": self.index})
        self.index += 1
        return framed

    def flush(self) -> bytes:
        framed = self.stop()
        if self.held_text:
            framed += self.start({"type": "text", "text": ""})
            framed += self.delta({"type": "text_delta", "text": "".join(self.held_text)}) + self.stop()
            self.held_text.clear()
        return framed

    def add(self, choice: ChoiceDelta) -> bytes:
        framed = b""
        if choice.reasoning:
            if self.open != "thinking":
                framed += self.flush() + self.start({"type": "thinking", "thinking": "", "signature": ""})
            framed += self.delta({"type": "thinking_delta", "thinking": choice.reasoning})
        if choice.content:
            if self.open == "tool_use":
                self.held_text.append(choice.content)
            else:
                if self.open != "text":
                    framed += self.flush() + self.start({"type": "text", "text": ""})
                framed += self.delta({"type": "text_delta", "text": choice.content})
        for call in choice.tool_calls:
            if call.id is not None and call.name is not None and self.tool_ids.get(call.index) != call.id:
                self.tool_ids[call.index] = call.id
                framed += self.flush() + self.start({"type": "tool_use", "id": call.id, "name": call.name,
                                                     "input": {}})
            if call.arguments and self.open == "tool_use":
                framed += self.delta({"type": "input_json_delta", "partial_json": call.arguments})
        return framed


class Messages:
    def __init__(self, engine: EngineClient, models: ModelCatalog, generator: Generator, heartbeat_s: float,
                 salter: CacheSalter) -> None:
        self.engine = engine
        self.models = models
        self.generator = generator
        self.heartbeat_s = heartbeat_s
        self.salter = salter

    def check(self, request: Conversation, principal: Principal | None) -> ServedModel:
        served = served_model(self.models, principal, request.model)
        if request.thinking is not None and self.engine.reasoning_parser is None:
            raise InvalidRequest("thinking is not supported: this model has no reasoning_parser in the server's "
                                 "profile", param="thinking")
        return served

    async def start(self, request: MessagesRequest, principal: Principal | None,
                    usage_sink: MutableMapping[str, Any], request_id: str) -> StartedMessage:
        """Everything that can refuse the request happens here, before a byte of the response is sent."""
        served = self.check(request, principal)
        message_id = MESSAGE_ID_PREFIX + request_id
        generation = await start_chat(self.engine, self.generator, self.salter, principal, request.chat_input(),
                                      request_id=message_id, choices=1, priority=0, min_tokens=request.max_tokens,
                                      usage_sink=usage_sink, adapter=served.adapter)
        return StartedMessage(generation, request, message_id, served.name)

    def head(self, started: StartedMessage) -> dict[str, Any]:
        return {"id": started.message_id, "type": "message", "role": "assistant", "content": [],
                "model": started.model, "stop_reason": None, "stop_sequence": None}

    async def collect(self, started: StartedMessage) -> dict[str, Any]:
        """The whole reply as one message body."""
        outcome = Outcome()
        reasoning: list[str] = []
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        try:
            async for step in started.generation:
                for choice in step.choices:
                    outcome.add(choice)
                    reasoning.append(choice.reasoning or "")
                    text.append(choice.content or "")
                    for call in choice.tool_calls:
                        merged = calls.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                        merged["id"] = merged["id"] or call.id
                        merged["name"] += call.name or ""
                        merged["arguments"] += call.arguments or ""
        except InvalidRequestError as exc:
            raise engine_refusal(exc, "messages") from None
        content: list[dict[str, Any]] = []
        if "".join(reasoning):
            content.append({"type": "thinking", "thinking": "".join(reasoning), "signature": uuid.uuid4().hex})
        if "".join(text):
            content.append({"type": "text", "text": "".join(text)})
        content += [{"type": "tool_use", "id": call["id"], "name": call["name"], "input": tool_input(call["arguments"])}
                    for _, call in sorted(calls.items())]
        tally = started.generation.tally
        return {**self.head(started), "content": content or [{"type": "text", "text": ""}], **outcome.stop(),
                "usage": usage(tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens)}

    async def events(self, started: StartedMessage, stream_error: StreamErrorFraming) -> EventStream:
        """message_start at once, ping while the request waits in the engine's queue, the content blocks as the
        tokens come, then message_delta (stop_reason, usage) and message_stop. An engine error after the first byte
        is an error event, as Anthropic sends it."""
        generation = started.generation
        tally = generation.tally
        outcome = Outcome()
        blocks = BlockFramer()
        async with StreamAccounting(started.model, started.close):
            yield event(Event.MESSAGE_START, {"message": {**self.head(started),
                                                          "usage": usage(tally.prompt_tokens, 0, None)}})
            try:
                async for step in with_heartbeats(generation, self.heartbeat_s):
                    if step is None:
                        yield PING
                        continue
                    framed = b""
                    for choice in step.choices:
                        outcome.add(choice)
                        framed += blocks.add(choice)
                    if framed:
                        yield framed
            except STREAM_ERRORS as exc:
                yield stream_error(exc)
            else:
                yield (blocks.flush()
                       + event(Event.MESSAGE_DELTA, {"delta": outcome.stop(), "usage": usage(
                           tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens)})
                       + event(Event.MESSAGE_STOP, {}))

    async def count_tokens(self, request: CountTokensRequest, principal: Principal | None) -> dict[str, Any]:
        """The prompt's tokens, rendered exactly as a message with these fields would render it."""
        self.check(request, principal)
        try:
            prompt = await self.engine.render(request.chat_input())
        except (PromptTooLongError, InvalidRequestError) as exc:
            raise engine_refusal(exc, "messages") from None
        return {"input_tokens": prompt.num_tokens}
