"""Arrival patterns: closed loop at a concurrency, or open loop at a request rate (Poisson, or burstier)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from tqdm import tqdm

from loadtests.client import as_completion, stream_chat
from loadtests.metrics import RequestResult
from loadtests.workload import Job, SendChat


async def run_closed_loop(send: SendChat, jobs: list[Job], concurrency: int, *, max_duration_s: float = 600.0,
                          label: str = "", ramp_up_s: float = 0.0) -> tuple[list[RequestResult], float]:
    """Run every job with at most `concurrency` at once; start no new job after `max_duration_s`. With `ramp_up_s`,
    the users arrive evenly over that time instead of all at once."""
    queue = list(reversed(jobs))
    results: list[RequestResult] = []
    start = time.perf_counter()
    deadline = start + max_duration_s
    with tqdm(total=len(jobs), desc=label or f"c={concurrency}", unit="job", leave=False,
              disable=None if label else True) as bar:

        async def worker(index: int) -> None:
            await asyncio.sleep(ramp_up_s * index / concurrency)
            while queue and time.perf_counter() < deadline:
                results.extend(await queue.pop().run(send))
                bar.update(1)

        await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return results, time.perf_counter() - start


def arrival_gaps(count: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps between arrivals: gamma-distributed with mean 1/rate (burstiness 1 = Poisson; < 1 burstier), as in
    vllm bench serve."""
    rng = random.Random(seed)
    return [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(count)]


async def run_open_loop(send: SendChat, jobs: list[Job], rate: float, *, burstiness: float = 1.0, seed: int = 0,
                        max_duration_s: float = 600.0, label: str = "") -> tuple[list[RequestResult], float]:
    """Start jobs at `rate` per second whatever the server's state; stop starting them after `max_duration_s`."""
    results: list[RequestResult] = []
    tasks = []
    start = time.perf_counter()
    with tqdm(total=len(jobs), desc=label or f"r={rate}", unit="job", leave=False,
              disable=None if label else True) as bar:

        async def one(job: Job) -> None:
            results.extend(await job.run(send))
            bar.update(1)

        for job, gap in zip(jobs, arrival_gaps(len(jobs), rate, burstiness, seed)):
            await asyncio.sleep(gap)
            if time.perf_counter() - start > max_duration_s:
                break
            tasks.append(asyncio.create_task(one(job)))
        await asyncio.gather(*tasks)
    return results, time.perf_counter() - start


def http_sender(http: httpx.AsyncClient, url: str, *, completions: bool = False) -> SendChat:
    """Sends each job's chat payload, or, with `completions`, its last message as a /v1/completions prompt."""
    async def send(payload: dict[str, Any]) -> RequestResult:
        return await stream_chat(http, url, as_completion(payload) if completions else payload)

    return send


def http_client(max_connections: int, api_key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_connections + 4, max_keepalive_connections=max_connections + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits, headers=headers)
