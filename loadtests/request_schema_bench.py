"""`python -m loadtests.request_schema_bench`: what a chat request's schemas cost on the hot path, per request: the
server's msgspec decode, the flattening to the engine's fields, vLLM's pydantic validation of them, and the
alternatives (vLLM's model_construct, pydantic alone), beside the chat template render every request pays anyway."""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

from engine.model_prep import DEFAULT_MODEL_NAME, default_cache_dir
from server.apis.decode import decode_body
from server.apis.openai.chat_completions.protocol import ChatCompletionRequest

TURN_CHARS = 400
TURNS = 6
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat_body(*, tools: bool) -> bytes:
    """A realistic chat: a system prompt, a few turns of a few hundred characters, the usual sampling fields."""
    turn = ("Explain how the prefix cache changes the cost of a long conversation. " * 8)[:TURN_CHARS]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a concise assistant."}]
    for index in range(TURNS):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": turn})
    body: dict[str, Any] = {"model": DEFAULT_MODEL_NAME, "messages": messages, "max_tokens": 128,
                            "temperature": 0.7, "top_p": 0.95, "stream": True,
                            "stream_options": {"include_usage": True}}
    if tools:
        body["tools"] = [WEATHER_TOOL]
    return json.dumps(body).encode()


def today(raw: bytes) -> Any:
    """msgspec decode + checks, flattened to a dict, validated again by vLLM's pydantic request."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmRequest

    chat = decode_body(raw, ChatCompletionRequest).chat_input()
    return VllmRequest.model_validate({"messages": chat.messages, **chat.fields})


def constructed(raw: bytes) -> Any:
    """(a) msgspec decode + checks, vLLM's request built with model_construct (no second validation). A lower bound:
    it skips the nested conversions (tools, response_format, stream_options stay dicts) vLLM's code relies on."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmRequest

    chat = decode_body(raw, ChatCompletionRequest).chat_input()
    return VllmRequest.model_construct(messages=chat.messages, **chat.fields)


def decode_only(raw: bytes) -> Any:
    """msgspec decode + checks + flattening alone: the server's schema's share of today's cost."""
    return decode_body(raw, ChatCompletionRequest).chat_input()


def pydantic_only(raw: bytes) -> Any:
    """(c) one pydantic schema from the bytes (vLLM's own request: a lower bound for a pydantic dialect schema)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmRequest

    return VllmRequest.model_validate_json(raw)


def template_render(tokenizer: Any) -> Callable[[bytes], Any]:
    def render(raw: bytes) -> Any:
        body = json.loads(raw)
        return tokenizer.apply_chat_template(body["messages"], tools=body.get("tools"), tokenize=True,
                                             add_generation_prompt=True)

    return render


def per_call_us(call: Callable[[bytes], Any], raw: bytes, number: int) -> float:
    call(raw)  # imports and caches outside the clock
    return min(timeit.repeat(lambda: call(raw), number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing (best of 5 timings)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_cache_dir() / DEFAULT_MODEL_NAME)
    candidates: dict[str, Callable[[bytes], Any]] = {
        "today: msgspec + dict + vLLM model_validate": today,
        "(a) msgspec + dict + vLLM model_construct": constructed,
        "msgspec decode + flatten alone": decode_only,
        "(c) pydantic alone (vLLM model_validate_json)": pydantic_only,
        "reference: chat template render + tokenize": template_render(tokenizer),
    }
    for tools in (False, True):
        raw = chat_body(tools=tools)
        print(f"chat body of {len(raw)} bytes, {'with' if tools else 'without'} tools:")
        for name, call in candidates.items():
            print(f"  {name:48s} {per_call_us(call, raw, args.number):9.1f} us")


if __name__ == "__main__":
    main()
