"""The openai SDK tests that every deployment must pass: tests/test_chat.py and tests/test_chat_api.py run them
against the suite's server, tests/test_scale_out.py against two API processes (each module's `client` and
`async_client` fixtures decide which). A test module takes them by importing their names."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_non_stream(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.create(
        model=model_name, messages=ask("Write a Python function that reverses a string."),
        max_tokens=64, temperature=0)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 64
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_is_deterministic(client: openai.OpenAI, model_name: str) -> None:
    texts = {client.chat.completions.create(model=model_name, messages=ask("Name a colour."), max_tokens=16,
                                            temperature=0).choices[0].message.content for _ in range(2)}
    assert len(texts) == 1


def test_max_tokens_gives_length(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.create(model=model_name, messages=ask("Tell me a long story."),
                                                max_completion_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_ignore_eos_produces_exactly_max_tokens(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.create(model=model_name, messages=ask("Hi"), max_tokens=40,
                                                extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 40


def test_stream_with_usage(client: openai.OpenAI, model_name: str) -> None:
    stream = client.chat.completions.create(model=model_name, messages=ask("Count to five."), max_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() and finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 24
    assert all(c.usage is None for c in chunks[:-1])
    # The streamed text is the greedy answer the non-stream route gives.
    whole = client.chat.completions.create(model=model_name, messages=ask("Count to five."), max_tokens=24,
                                           temperature=0)
    assert whole.choices[0].message.content == text


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI, model_name: str) -> None:
    chunks = list(client.chat.completions.create(model=model_name, messages=ask("Hi"), max_tokens=8, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_stop_sequence(client: openai.OpenAI, model_name: str) -> None:
    prompt = ask("Count from 1 to 10, separated by commas.")
    free = client.chat.completions.create(model=model_name, messages=prompt, max_tokens=60, temperature=0)
    text = free.choices[0].message.content
    assert "5" in text, text
    stopped = client.chat.completions.create(model=model_name, messages=prompt, max_tokens=60, temperature=0,
                                             stop=["5"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[:text.index("5")]


def test_n_choices_and_logprobs(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.create(model=model_name, messages=ask("Say something."), max_tokens=8,
                                                n=3, seed=7, logprobs=True, top_logprobs=2)
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]
    for choice in completion.choices:
        entries = choice.logprobs.content
        assert entries and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    assert completion.usage.completion_tokens == sum(len(c.logprobs.content) for c in completion.choices)


def test_seed_makes_sampling_repeatable(client: openai.OpenAI, model_name: str) -> None:
    texts = {client.chat.completions.create(model=model_name, messages=ask("Invent a word."), max_tokens=12,
                                            temperature=1.0, seed=1234).choices[0].message.content
             for _ in range(2)}
    assert len(texts) == 1


async def test_async_client_sixteen_concurrent_streams(async_client: openai.AsyncOpenAI, model_name: str) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        stream = await async_client.chat.completions.create(
            model=model_name, messages=ask(f"Write one sentence about the number {i}."), max_tokens=32,
            temperature=1.0, seed=i, stream=True)
        parts, finish = [], None
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    results = await asyncio.gather(*(one(i) for i in range(16)))
    texts = [text for text, _ in results]
    assert all(text.strip() for text in texts)
    assert all(finish in ("stop", "length") for _, finish in results)
    assert len(set(texts)) == 16


async def test_async_client_non_stream(async_client: openai.AsyncOpenAI, model_name: str) -> None:
    completion = await async_client.chat.completions.create(model=model_name, messages=ask("Hello"), max_tokens=8)
    assert completion.choices[0].message.content


# --- structured output and tools (tests/test_chat_api.py) ------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
WEATHER_SCHEMA = WEATHER["function"]["parameters"]


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    sure: bool


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.parse(model=model_name, messages=ask("Is the sky blue? Answer in JSON."),
                                               response_format=Verdict, max_tokens=60, temperature=0)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Verdict)


def reassemble(chunks: list) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                assert not call["id"], "the id comes once, with the first piece"
                call["id"] = delta.id
                assert delta.function.name, "the name comes with the first piece"
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return calls


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_validates_and_streams_the_same(client: openai.OpenAI, model_name: str,
                                                         tool_choice: object) -> None:
    request = {"model": model_name, "messages": ask("What is the weather in Rome?"), "tools": [WEATHER],
               "tool_choice": tool_choice, "max_tokens": 80, "temperature": 0}
    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]
    assert choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert choice.finish_reason == ("tool_calls" if tool_choice == "required" else "stop")
    chunks = list(client.chat.completions.create(**request, stream=True))
    streamed = reassemble(chunks)[0]
    assert streamed["name"] == call.function.name
    assert json.loads(streamed["arguments"]) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def weather_call(call_id: str, city: str) -> dict[str, object]:
    return {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": city, "unit": "C"})}}]}


# Two questions answered by calls: enough for a 135M model to answer the third the same way of its own accord.
FEW_SHOT = [{"role": "user", "content": "Weather in Paris?"}, weather_call("call_1", "Paris"),
            {"role": "user", "content": "Weather in Oslo?"}, weather_call("call_2", "Oslo")]


def test_auto_with_the_hermes_parser_and_a_tool_loop(client: openai.OpenAI, model_name: str) -> None:
    """The test server runs tool_call_parser hermes with a Hermes-style template (configs/templates)."""
    messages = [*FEW_SHOT, {"role": "user", "content": "What is the weather in Rome?"}]
    first = client.chat.completions.create(model=model_name, messages=messages, tools=[WEATHER], tool_choice="auto",
                                           max_tokens=60, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "Rome" in call.function.arguments
    # The tool's result goes back; the model answers in words.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "25, clear"}]
    final = client.chat.completions.create(model=model_name, messages=messages, tools=[WEATHER], max_tokens=30,
                                           temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


