"""Shared by the Responses-state tests: a Response object as the generation side saves it, and OpenAI items."""

from __future__ import annotations

import uuid
from typing import Any


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant_message(text: str) -> dict[str, Any]:
    return {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def function_call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed"}


def function_output(call_id: str, output: str = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def a_response(*output: dict[str, Any], previous: str | None = None,
               conversation: str | None = None) -> dict[str, Any]:
    return {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": 1_700_000_000,
            "status": "completed", "model": "test", "previous_response_id": previous,
            "conversation": {"id": conversation} if conversation else None,
            "output": list(output) or [assistant_message("hello")]}
