"""One streamed chat (or completion) request against an OpenAI-compatible server, timed chunk by chunk."""

from __future__ import annotations

import time
from typing import Any

import httpx

from loadtests.metrics import RequestResult
from loadtests.sse import aiter_events
from server.sse import ReplyEvent


def chunk_text(choice: dict[str, Any]) -> str | None:
    """A chat chunk's delta content, or a completion chunk's text."""
    delta = choice.get("delta")
    return delta.get("content") if delta is not None else choice.get("text")


# A job's private instruction to the client, never sent: stop reading the stream after this many content chunks.
CANCEL_AFTER = "_loadtest_cancel_after"


def as_completion(payload: dict[str, Any]) -> dict[str, Any]:
    """The chat payload's last user message as a /v1/completions prompt (the same work, without a chat template)."""
    body = {key: value for key, value in payload.items() if key != "messages"}
    body["prompt"] = payload["messages"][-1]["content"]
    return body


async def stream_chat(http: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> RequestResult:
    """POST a chat (or completion) request with stream=true and include_usage; measure TTFT, ITL and latency (of
    an error answer too: how fast a refusal comes). A payload with CANCEL_AFTER is abandoned after that many
    content chunks, as a user who closes the tab: the connection is closed mid-stream."""
    cancel_after: int | None = payload.get(CANCEL_AFTER)
    body = {**{k: v for k, v in payload.items() if k != CANCEL_AFTER}, "stream": True,
            "stream_options": {"include_usage": True}}
    result = RequestResult(ok=False)
    start = time.perf_counter()
    last = start
    counted = 0
    parts: list[str] = []
    try:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.latency = time.perf_counter() - start
                result.status = response.status_code
                result.error = f"http {response.status_code}"
                return result
            async for event in aiter_events(response.aiter_lines()):
                if event.done:
                    break
                chunk = event.json()
                if "error" in chunk:
                    result.error = "in-stream error"
                    return result
                if usage := chunk.get("usage"):
                    result.prompt_tokens = usage["prompt_tokens"]
                    result.output_tokens = usage["completion_tokens"]
                choices = chunk.get("choices") or []
                content = chunk_text(choices[0]) if choices else None
                if content:
                    parts.append(content)
                    now = time.perf_counter()
                    if counted == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    counted += 1
                    if cancel_after is not None and counted >= cancel_after:
                        # Leaving the block closes the connection: the server sees the client go.
                        result.cancelled = True
                        break
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
        return result
    result.latency = time.perf_counter() - start
    result.output_tokens = result.output_tokens or counted
    result.text = "".join(parts)
    if result.cancelled:
        result.output_tokens = counted  # the usage chunk never came
        result.error = "cancelled by the client"
        return result
    result.ok = counted > 0
    if not result.ok:
        result.error = "no content"
    return result


async def stream_sse_reply(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """POST to a CodeFace conversation route with stream=true; returns TTFT and the final event's data."""
    start = time.perf_counter()
    ttft = 0.0
    final: dict[str, Any] = {}
    async with http.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return 0.0, {"status": f"http {response.status_code}"}
        async for event in aiter_events(response.aiter_lines()):
            if event.event == ReplyEvent.DELTA and not ttft:
                ttft = time.perf_counter() - start
            elif event.event in (ReplyEvent.COMPLETED, ReplyEvent.ERROR):
                final = event.json()
    return ttft, final
