"""End to end through the official openai SDK: real HTTP, real server, real CPU engine, real model."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

# The openai SDK tests every deployment must pass (tests/test_scale_out.py runs them against two API processes).
from support.sdk_contract import (  # noqa: F401
    ask,
    test_async_client_non_stream,
    test_async_client_sixteen_concurrent_streams,
    test_greedy_is_deterministic,
    test_ignore_eos_produces_exactly_max_tokens,
    test_max_tokens_gives_length,
    test_n_choices_and_logprobs,
    test_non_stream,
    test_seed_makes_sampling_repeatable,
    test_stop_sequence,
    test_stream_with_usage,
    test_stream_without_usage_has_no_usage_chunk,
)


@pytest.fixture(scope="module")
def async_client(server_url: str, admin_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)


def test_models_and_probes(server_url: str, client: openai.OpenAI, model_name: str) -> None:
    assert [m.id for m in client.models.list()] == [model_name]
    assert httpx.get(f"{server_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server_url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == model_name


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
