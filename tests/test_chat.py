"""End to end through the official openai SDK: real HTTP, real server, real CPU engine, real model."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(server_url: str, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def async_client(server_url: str, admin_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_models_and_probes(server_url: str, client: openai.OpenAI, model_name: str) -> None:
    assert [m.id for m in client.models.list()] == [model_name]
    assert httpx.get(f"{server_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server_url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == model_name


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


def in_flight(server_url: str) -> int:
    return httpx.get(f"{server_url}/readyz").json()["engine"]["requests_in_flight"]


def wait_for_idle(server_url: str, timeout_s: float = 15) -> float:
    start = time.monotonic()
    while in_flight(server_url) != 0:
        assert time.monotonic() - start < timeout_s, "the engine kept generating for a client that left"
        time.sleep(0.1)
    return time.monotonic() - start


LONG_REQUEST = {"messages": ask("Tell me everything."), "max_tokens": 1500, "ignore_eos": True}


def engine_running(server_url: str) -> int:
    return httpx.get(f"{server_url}/readyz").json()["engine"]["running"]


def assert_engine_dropped_it(server_url: str, headers: dict[str, str]) -> None:
    """The engine core itself (not only the frontend) dropped the request: a short request run afterwards is
    the only one the scheduler reports running."""
    probe = {"messages": ask("Hi"), "max_tokens": 60, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", headers=headers, json=probe, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(20):  # well into the decode: the scheduler has reported on steps that include it
            next(lines)
        assert engine_running(server_url) == 1


def test_stream_disconnect_aborts_engine_request(server_url: str, auth_headers: dict[str, str]) -> None:
    wait_for_idle(server_url)
    with httpx.Client(timeout=60, headers=auth_headers) as http, \
            http.stream("POST", f"{server_url}/v1/chat/completions", json={**LONG_REQUEST, "stream": True}) as r:
        lines = r.iter_lines()
        received = [line for line, _ in zip(lines, range(8)) if line.startswith("data:")]
        assert len(received) >= 3
        assert in_flight(server_url) == 1
    # 1500 tokens take over a minute here; the request must leave the engine within seconds.
    assert wait_for_idle(server_url) < 15
    assert_engine_dropped_it(server_url, auth_headers)


async def test_non_stream_disconnect_aborts_engine_request(server_url: str, auth_headers: dict[str, str]) -> None:
    wait_for_idle(server_url)
    async with httpx.AsyncClient(timeout=60, headers=auth_headers) as http:
        task = asyncio.create_task(http.post(f"{server_url}/v1/chat/completions", json=LONG_REQUEST))
        for _ in range(100):
            await asyncio.sleep(0.1)
            if in_flight(server_url) == 1:
                break
        assert in_flight(server_url) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert wait_for_idle(server_url) < 15
    assert_engine_dropped_it(server_url, auth_headers)
