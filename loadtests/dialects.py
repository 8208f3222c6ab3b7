"""The two dialects side by side on one server: the same prompts through /v1/chat/completions and /v1/messages
(temperature 0, so the same tokens come out), streamed, in alternating order, repeated; output tok/s and median
time to first token per round, reported as median [min-max] over the rounds.

    python -m loadtests.dialects --repeats 3 --requests 8 --concurrency 1,4
(starts CodeFace with configs/cpu.yaml, auth on, for the run), or against a running server: --url and --api-key."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ("the sea", "a mountain", "bread", "a library", "rain", "a bicycle", "coffee", "the moon", "a garden",
          "winter", "a train", "music")


class Dialect(StrEnum):
    CHAT = "chat"
    MESSAGES = "messages"


@dataclass
class Sample:
    ttft_s: float
    output_tokens: int


@dataclass
class Round:
    tokens_per_s: float
    median_ttft_ms: float


def prompt(index: int, run: str) -> str:
    # A run tag first: no prompt of one round is in the prefix cache from another.
    return f"[{run}] Write a short paragraph about {TOPICS[index % len(TOPICS)]}."


async def sse_lines(response: httpx.Response) -> list[str]:
    return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


async def chat_sample(http: httpx.AsyncClient, model: str, text: str, max_tokens: int) -> Sample:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage") and not chunk["choices"]:
                tokens = chunk["usage"]["completion_tokens"]
    assert first is not None and tokens > 0
    return Sample(first, tokens)


async def messages_sample(http: httpx.AsyncClient, model: str, text: str, max_tokens: int) -> Sample:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/messages", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if first is None and event["type"] == "content_block_delta" and event["delta"].get("text"):
                first = time.perf_counter() - started
            if event["type"] == "message_delta":
                tokens = event["usage"]["output_tokens"]
    assert first is not None and tokens > 0
    return Sample(first, tokens)


SAMPLERS: dict[Dialect, Callable[[httpx.AsyncClient, str, str, int], Awaitable[Sample]]] = {
    Dialect.CHAT: chat_sample, Dialect.MESSAGES: messages_sample}


async def one_round(http: httpx.AsyncClient, dialect: Dialect, model: str, requests: int, concurrency: int,
                    max_tokens: int) -> Round:
    """`requests` requests, `concurrency` at a time (closed loop)."""
    run = uuid.uuid4().hex[:8]
    queue = list(range(requests))
    samples: list[Sample] = []

    async def worker() -> None:
        while queue:
            index = queue.pop()
            samples.append(await SAMPLERS[dialect](http, model, prompt(index, run), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Round(sum(s.output_tokens for s in samples) / elapsed,
                 statistics.median(s.ttft_s for s in samples) * 1000)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


async def compare(url: str, api_key: str, *, repeats: int, requests: int, concurrencies: list[int],
                  max_tokens: int) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        for dialect in Dialect:  # warm-up: the first requests of a fresh engine are slower
            await one_round(http, dialect, model, 2, 1, max_tokens)
        rows = ["| route | conc | out tok/s med [min-max] | med TTFT ms med [min-max] |", "|---|---|---|---|"]
        for concurrency in concurrencies:
            results: dict[Dialect, list[Round]] = {dialect: [] for dialect in Dialect}
            for repeat in range(repeats):
                order = list(Dialect) if repeat % 2 == 0 else list(reversed(Dialect))
                for dialect in order:
                    results[dialect].append(await one_round(http, dialect, model, requests, concurrency, max_tokens))
            for dialect in Dialect:
                path = "/v1/chat/completions" if dialect == Dialect.CHAT else "/v1/messages"
                rows.append(f"| `{path}` | {concurrency} | {spread([r.tokens_per_s for r in results[dialect]])} | "
                            f"{spread([r.median_ttft_ms for r in results[dialect]])} |")
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; by default one is started with --config")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/cpu.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8, help="per round")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    async def run(url: str, api_key: str) -> None:
        print(await compare(url, api_key, repeats=args.repeats, requests=args.requests, concurrencies=concurrencies,
                            max_tokens=args.max_tokens))

    if args.url:
        await run(args.url, args.api_key)
        return
    from loadtests.systems import codeface_server

    with tempfile.TemporaryDirectory() as folder:
        server = await codeface_server(args.config, {}, Path(folder), "dialects")
        server.start()
        try:
            await run(server.base_url, server.api_key or "")
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
