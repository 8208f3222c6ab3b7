"""A response's output items built from the engine's deltas: reasoning, message (output_text) and function_call
items in the order the model produced them, and OpenAI's semantic events for each change, as vllm serve's
streaming_events.py frames them. The same builder makes the body and the stream, so both carry the same ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from engine import ChoiceDelta
from server.apis.openai.chunks import logprobs_content

# One event before its sequence number: its type and its fields.
Event = tuple[str, dict[str, Any]]


class Kind(StrEnum):
    MESSAGE = "message"
    REASONING = "reasoning"
    FUNCTION_CALL = "function_call"


class Status(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class OpenItem:
    """The item being written: its place in the output, its id and what it has so far."""

    kind: Kind
    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class OutputBuilder:
    """Feed it each delta (add), then finish; `output` is the response's output items."""

    want_logprobs: bool = False
    output: list[dict[str, Any]] = field(default_factory=list)
    open: OpenItem | None = None
    calls: dict[int, OpenItem] = field(default_factory=dict)
    reasoning_tokens: int = 0

    def start(self, kind: Kind, item: dict[str, Any]) -> list[Event]:
        events = self.close(Status.COMPLETED)
        self.open = OpenItem(kind, len(self.output), item)
        self.output.append(item)
        events.append(("response.output_item.added", {"output_index": self.open.index, "item": dict(item)}))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == Kind.MESSAGE else (
            {"type": "reasoning_text", "text": ""} if kind == Kind.REASONING else None)
        if part is not None:
            events.append(("response.content_part.added", {"item_id": item["id"], "output_index": self.open.index,
                                                           "content_index": 0, "part": part}))
        return events

    def add(self, choice: ChoiceDelta) -> list[Event]:
        events: list[Event] = []
        if choice.reasoning:
            self.reasoning_tokens += choice.num_tokens if not choice.content else 0
            if self.open is None or self.open.kind != Kind.REASONING:
                events += self.start(Kind.REASONING, {"id": new_id("rs"), "type": "reasoning", "summary": [],
                                                      "status": Status.IN_PROGRESS})
            events.append(self.delta("response.reasoning_text.delta", choice.reasoning))
        if choice.content:
            if self.open is None or self.open.kind != Kind.MESSAGE:
                events += self.start(Kind.MESSAGE, {"id": new_id("msg"), "type": "message", "role": "assistant",
                                                    "status": Status.IN_PROGRESS, "content": []})
            logprobs = logprobs_content(choice.logprobs or []) if self.want_logprobs else []
            events.append(self.delta("response.output_text.delta", choice.content, logprobs=logprobs))
        for call in choice.tool_calls:
            current = self.calls.get(call.index)
            if current is None:
                events += self.start(Kind.FUNCTION_CALL, {
                    "id": new_id("fc"), "type": "function_call", "call_id": call.id or new_id("call"),
                    "name": call.name or "", "arguments": "", "status": Status.IN_PROGRESS})
                assert self.open is not None
                self.calls[call.index] = current = self.open
            if call.arguments and current is self.open:
                events.append(self.delta("response.function_call_arguments.delta", call.arguments))
        return events

    def delta(self, event: str, text: str, **extra: Any) -> Event:
        assert self.open is not None
        self.open.text.append(text)
        if extra.get("logprobs"):
            self.open.logprobs += extra["logprobs"]
        data = {"item_id": self.open.item["id"], "output_index": self.open.index, **extra, "delta": text}
        if self.open.kind != Kind.FUNCTION_CALL:
            data["content_index"] = 0
        return event, data

    def close(self, status: Status) -> list[Event]:
        """The done events of the open item, which takes its final shape in `output`."""
        current, self.open = self.open, None
        if current is None:
            return []
        item, text = current.item, "".join(current.text)
        item["status"] = status
        where = {"item_id": item["id"], "output_index": current.index}
        events: list[Event] = []
        if current.kind == Kind.MESSAGE:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": current.logprobs}
            item["content"] = [part]
            events += [("response.output_text.done", {**where, "content_index": 0, "text": text,
                                                      "logprobs": current.logprobs}),
                       ("response.content_part.done", {**where, "content_index": 0, "part": part})]
        elif current.kind == Kind.REASONING:
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events += [("response.reasoning_text.done", {**where, "content_index": 0, "text": text}),
                       ("response.content_part.done", {**where, "content_index": 0, "part": part})]
        else:
            item["arguments"] = text
            events.append(("response.function_call_arguments.done", {**where, "name": item["name"],
                                                                     "arguments": text}))
        events.append(("response.output_item.done", {"output_index": current.index, "item": item}))
        return events

    def snapshot(self) -> list[dict[str, Any]]:
        """The output so far, the open item with its text so far (in_progress): a background response's body while
        it runs. Copies: the builder goes on changing its own."""
        output = [dict(item) for item in self.output]
        current = self.open
        if current is not None:
            item, text = output[current.index], "".join(current.text)
            if current.kind == Kind.MESSAGE:
                item["content"] = [{"type": "output_text", "text": text, "annotations": [],
                                    "logprobs": list(current.logprobs)}]
            elif current.kind == Kind.REASONING:
                item["content"] = [{"type": "reasoning_text", "text": text}]
            else:
                item["arguments"] = text
        return output

    def finish(self, incomplete: bool) -> list[Event]:
        return self.close(Status.INCOMPLETE if incomplete else Status.COMPLETED)
