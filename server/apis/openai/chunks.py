"""Builds OpenAI chat.completion bodies and chat.completion.chunk SSE events from engine output: content,
reasoning and tool calls framed exactly as OpenAI frames them, usage with cached tokens, logprobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine import ChoiceDelta, TokenLogprob, ToolCallDelta
from server.errors import error_body, status_of
from server.sse import encode_json, frame

COMPLETION_ID_PREFIX = "chatcmpl-"
# vLLM's finish reason for a request stopped before its end; OpenAI's format has no such value.
ABORTED = "abort"
STOP = "stop"


# How a stream reports an error after its first byte: one event, as OpenAI and vLLM send it.
StreamErrorFraming = Callable[[Exception], bytes]


def stream_error_framing(path: str) -> StreamErrorFraming:
    """The in-stream error event of the route at `path`: the error envelope it would have answered with."""

    def framed(error: Exception) -> bytes:
        return frame(error_body(status_of(error), str(error), path=path))

    return framed


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


def logprobs_content(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": entry.token,
            "logprob": entry.logprob,
            "bytes": list(entry.token.encode()),
            "top_logprobs": [{"token": token, "logprob": logprob, "bytes": list(token.encode())}
                             for token, logprob in entry.top],
        }
        for entry in entries
    ]


def tool_call_delta(call: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed shape: index always; id, type and name on the first piece; argument fragments after."""
    framed: dict[str, Any] = {"index": call.index}
    if call.id is not None:
        framed["id"] = call.id
        framed["type"] = "function"
    function: dict[str, str] = {}
    if call.name is not None:
        function["name"] = call.name
    if call.arguments is not None:
        function["arguments"] = call.arguments
    if function:
        framed["function"] = function
    return framed


class ChunkWriter:
    """Frames one streamed completion: every chunk shares id, created, model and fingerprint, as OpenAI's do."""

    def __init__(self, request_id: str, model: str, fingerprint: str, *, include_usage: bool,
                 continuous_usage: bool = False) -> None:
        self.head = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "system_fingerprint": fingerprint}
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        # The frame of a step that brings one choice's content and nothing else (nearly every token of a reply),
        # pre-encoded around the content: the bytes `chunk` makes of it, without a dict or an encode of the rest.
        usage_tail = b',"usage":null' if include_usage and not continuous_usage else b""
        head = encode_json({**self.head, "choices": []})[:-3]
        self._content_head = b"data: " + head + b'[{"index":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null}]' + usage_tail + b"}\n\n"

    def content_only(self, choices: list[ChoiceDelta]) -> bytes | None:
        """The frame of a step whose one choice brings content alone (no finish, logprobs, ids or parsed parts),
        unless usage goes with every chunk; else None, and `deltas` and `chunk` frame it."""
        if len(choices) != 1 or self.continuous_usage:
            return None
        choice = choices[0]
        if (not choice.content or choice.finish_reason is not None or choice.logprobs is not None
                or choice.reasoning or choice.tool_calls or choice.token_ids is not None):
            return None
        return b"".join((self._content_head, b"%d" % choice.index, b',"delta":{"content":', encode_json(choice.content),
                         self._content_tail))

    def chunk(self, choices: list[dict[str, Any]], usage_so_far: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {**self.head, "choices": choices}
        if self.include_usage:
            body["usage"] = usage_so_far if self.continuous_usage else None
        return frame(body)

    def role(self, n: int, echo: str | None = None) -> list[dict[str, Any]]:
        delta = {"role": "assistant", "content": echo or ""}
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None} for i in range(n)]

    def deltas(self, choices: list[ChoiceDelta]) -> list[dict[str, Any]]:
        """Every choice's new output; an empty list when the step brought nothing to show."""
        framed = []
        for choice in choices:
            finish = choice.finish_reason if choice.finish_reason != ABORTED else None
            delta: dict[str, Any] = {}
            if choice.content:
                delta["content"] = choice.content
            if choice.reasoning:
                delta["reasoning"] = choice.reasoning
            if choice.tool_calls:
                delta["tool_calls"] = [tool_call_delta(call) for call in choice.tool_calls]
            if not delta and finish is None and not choice.logprobs and choice.token_ids is None:
                continue
            entry: dict[str, Any] = {
                "index": choice.index,
                "delta": delta,
                "logprobs": {"content": logprobs_content(choice.logprobs)} if choice.logprobs is not None else None,
                "finish_reason": finish,
            }
            if choice.token_ids is not None:
                entry["token_ids"] = choice.token_ids
            framed.append(entry)
        return framed

    def usage(self, body: dict[str, Any]) -> bytes:
        return frame({**self.head, "choices": [], "usage": body})


class MessageBuilder:
    """Accumulates one choice of a non-streamed reply: content, reasoning, tool calls merged by index."""

    def __init__(self, echo: str | None = None) -> None:
        self.content: list[str] = [echo] if echo else []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[TokenLogprob] = []
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def add(self, choice: ChoiceDelta) -> None:
        if choice.content:
            self.content.append(choice.content)
        if choice.reasoning:
            self.reasoning.append(choice.reasoning)
        for call in choice.tool_calls:
            merged = self.tool_calls.setdefault(call.index, {"id": None, "type": "function",
                                                             "function": {"name": "", "arguments": ""}})
            merged["id"] = merged["id"] or call.id
            merged["function"]["name"] += call.name or ""
            merged["function"]["arguments"] += call.arguments or ""
        if choice.logprobs:
            self.logprobs.extend(choice.logprobs)
        if choice.token_ids:
            self.token_ids.extend(choice.token_ids)
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason

    def choice(self, index: int, *, want_logprobs: bool, want_token_ids: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(self.content) if self.content or not self.tool_calls else None}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": {"content": logprobs_content(self.logprobs)} if want_logprobs else None,
            "finish_reason": self.finish_reason if self.finish_reason not in (None, ABORTED) else STOP,
        }
        if want_token_ids:
            body["token_ids"] = self.token_ids
        return body
