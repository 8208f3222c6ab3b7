"""Builds OpenAI chat.completion bodies and chat.completion.chunk SSE events from engine output."""

from __future__ import annotations

import time
import uuid
from typing import Any

from engine import ChoiceDelta, TokenLogprob
from server.serving.sse import frame

COMPLETION_ID_PREFIX = "chatcmpl-"
# vLLM's finish reason for a request stopped before its end; OpenAI's format has no such value.
ABORTED = "abort"


def completion_id() -> str:
    return f"{COMPLETION_ID_PREFIX}{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


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


class ChunkWriter:
    """Frames one streamed completion: every chunk shares id, created and model, as OpenAI's do."""

    def __init__(self, request_id: str, model: str, *, include_usage: bool) -> None:
        self.head = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model}
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        chunk: dict[str, Any] = {**self.head, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return frame(chunk)

    def role(self, n: int) -> bytes:
        return self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None} for i in range(n)])

    def deltas(self, choices: list[ChoiceDelta]) -> bytes | None:
        """One event carrying every choice's new text; None when the step brought nothing to show."""
        framed = []
        for choice in choices:
            finish = choice.finish_reason if choice.finish_reason != ABORTED else None
            if not choice.text and finish is None and not choice.logprobs:
                continue
            framed.append({
                "index": choice.index,
                "delta": {"content": choice.text} if choice.text else {},
                "logprobs": {"content": logprobs_content(choice.logprobs)} if choice.logprobs is not None else None,
                "finish_reason": finish,
            })
        return self._chunk(framed) if framed else None

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return frame({**self.head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def completion_body(request_id: str, model: str, texts: list[str], finish_reasons: list[str | None],
                    logprobs: list[list[TokenLogprob]] | None, prompt_tokens: int, completion_tokens: int
                    ) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": logprobs_content(logprobs[index])} if logprobs is not None else None,
                "finish_reason": finish_reasons[index] or "stop",
            }
            for index, text in enumerate(texts)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }
