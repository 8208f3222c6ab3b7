"""Closed-loop runs: a fixed number of requests at a fixed concurrency, bounded in count and time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from loadtests.client import stream_chat
from loadtests.metrics import RequestResult

Send = Callable[[dict[str, Any]], Awaitable[RequestResult]]


async def run_closed_loop(send: Send, payloads: list[dict[str, Any]], concurrency: int,
                          max_duration_s: float = 600.0) -> tuple[list[RequestResult], float]:
    """Send every payload with at most `concurrency` in flight; stop starting new ones after `max_duration_s`."""
    queue = list(reversed(payloads))
    results: list[RequestResult] = []
    start = time.perf_counter()
    deadline = start + max_duration_s

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            results.append(await send(queue.pop()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - start


def http_sender(http: httpx.AsyncClient, url: str) -> Send:
    async def send(payload: dict[str, Any]) -> RequestResult:
        return await stream_chat(http, url, payload)

    return send


def http_client(concurrency: int, api_key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits, headers=headers)
