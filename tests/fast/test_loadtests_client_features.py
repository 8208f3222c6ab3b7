"""The load tool's client side against fake servers (httpx.MockTransport, named as fakes): refusals timed and
counted apart, users who leave mid-stream, users arriving over a ramp, and the server's metrics read around a
level."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from loadtests.client import CANCEL_AFTER, stream_chat
from loadtests.metrics import RequestResult, summarize
from loadtests.scrape import gained, parse

URL = "http://fake/v1/chat/completions"


def chunk(text: str) -> bytes:
    return f"data: {json.dumps({'choices': [{'delta': {'content': text}}]})}\n\n".encode()


class FakeStreamingServer:
    """A fake server streaming `count` content chunks, counting how many the client made it send."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0

    async def body(self) -> AsyncIterator[bytes]:
        for index in range(self.count):
            self.sent += 1
            yield chunk(f"t{index} ")
            await asyncio.sleep(0.001)
        yield b"data: [DONE]\n\n"

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert CANCEL_AFTER not in json.loads(request.content), "the client's instruction reached the server"
        return httpx.Response(200, content=self.body(), headers={"content-type": "text/event-stream"})


async def test_a_refusal_is_timed_and_counted_apart_from_failures() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return httpx.Response(503, json={"error": {"message": "over capacity"}}, headers={"Retry-After": "1"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        result = await stream_chat(http, URL, {"messages": []})
    assert (result.ok, result.status, result.refused, result.error) == (False, 503, True, "http 503")
    assert result.latency >= 0.02

    crashed = RequestResult(ok=False, status=500, error="http 500", latency=0.5)
    summary = summarize([result, crashed], duration_s=1.0)
    assert (summary.failed, summary.refused) == (2, 1)
    assert summary.refusal_ms["p99"] == pytest.approx(result.latency * 1000)


async def test_a_user_who_leaves_mid_stream_closes_it_and_is_not_a_failure() -> None:
    server = FakeStreamingServer(count=50)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.handler)) as http:
        result = await stream_chat(http, URL, {"messages": [], CANCEL_AFTER: 3})
    assert result.cancelled and not result.ok
    assert result.output_tokens == 3 and result.text == "t0 t1 t2 "
    assert server.sent < 50, "the client read the whole stream instead of closing it"

    whole = RequestResult(ok=True, ttft=0.1, latency=0.2, output_tokens=2)
    summary = summarize([result, whole], duration_s=1.0)
    assert (summary.completed, summary.failed, summary.cancelled, summary.errors) == (1, 0, 1, {})


async def test_users_arrive_evenly_over_the_ramp() -> None:
    from loadtests.runner import run_closed_loop
    from loadtests.workload import Job

    started: list[float] = []

    async def send(payload: dict[str, object]) -> RequestResult:
        started.append(time.perf_counter())
        await asyncio.sleep(1.0)  # every user is still busy when the last one arrives
        return RequestResult(ok=True, output_tokens=1)

    jobs = [Job(["hi"], [1]) for _ in range(4)]
    begin = time.perf_counter()
    await run_closed_loop(send, jobs, concurrency=4, ramp_up_s=0.4)
    offsets = sorted(at - begin for at in started)
    # User i of 4 arrives no sooner than i/4 of the ramp (a sleep never ends early; how late it ends depends on the
    # machine's load, so only the lower bound is asserted: without the ramp all four would start at once).
    for index, offset in enumerate(offsets):
        assert offset >= 0.1 * index - 0.005, offsets


def test_the_servers_counters_gained_over_a_level_and_its_gauges_at_the_end() -> None:
    before = parse("""# TYPE codeface_refusals counter
codeface_refusals_total{reason="slo_ttft"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running 0.0
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 12.0
""")
    after = parse("""# TYPE codeface_refusals counter
codeface_refusals_total{reason="slo_ttft"} 10.0
codeface_refusals_total{reason="tenant_share"} 2.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running 4.0
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 20.0
""")
    assert gained(before, after) == {'codeface_refusals_total{reason="slo_ttft"}': 7.0,
                                     'codeface_refusals_total{reason="tenant_share"}': 2.0,
                                     "vllm:num_requests_running": 4.0}
    assert gained(None, after) == {}
