"""`python -m loadtests listeners`: what N idle SSE listeners (browser tabs waiting for the next reply on
GET /api/v1/stream/{id}) cost the server: its CPU seconds per 10 s and RSS with N listeners and without, and a chat
load's output tok/s and TTFT beside them and without them. One fresh CodeFace server (auth on, limits checked),
repeats in alternating order. The listeners are raw asyncio connections (a read each, no parsing while idle) so
that the client costs little next to the server on the same machine."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtests.metrics import summarize
from loadtests.report import markdown_table
from loadtests.runner import http_client, http_sender, run_closed_loop
from loadtests.systems import ServerProcess, codeface_server
from loadtests.workload import Job

CONNECT_BATCH = 200
# Before a quiet window: the work a chat load or 10,000 closing connections leave behind is done by then.
SETTLE_S = 5.0
CONVERSATION_BATCH = 64
READ_CHUNK = 4096


@dataclass
class Window:
    """The server's resource use over a quiet window."""

    cpu_s_per_10s: float          # the API process (the engine core processes are counted apart)
    engine_cpu_s_per_10s: float
    rss_mib: float


@dataclass
class Repeat:
    idle: Window
    listening: Window
    listeners_alive: int
    heartbeats_received: int
    chat_with: dict[str, float] = field(default_factory=dict)
    chat_without: dict[str, float] = field(default_factory=dict)


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """(the process's CPU seconds, its children's)."""
    own = process.cpu_times()
    children = 0.0
    for child in process.children(recursive=True):
        try:
            times = child.cpu_times()
            children += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return own.user + own.system, children


async def measure_window(process: psutil.Process, seconds: float) -> Window:
    own_before, children_before = cpu_seconds(process)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    own_after, children_after = cpu_seconds(process)
    elapsed = time.monotonic() - began
    return Window((own_after - own_before) * 10 / elapsed, (children_after - children_before) * 10 / elapsed,
                  process.memory_info().rss / (1 << 20))


class IdleListeners:
    """N open GET /api/v1/stream/{id} connections, each read by a task that counts heartbeat bytes."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.readers: list[asyncio.Task[None]] = []
        self.heartbeats = 0
        self.closed_by_server = 0

    async def open(self, conversation_ids: list[str]) -> None:
        for start in range(0, len(conversation_ids), CONNECT_BATCH):
            await asyncio.gather(*(self._open_one(c) for c in conversation_ids[start:start + CONNECT_BATCH]))

    async def _open_one(self, conversation_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=READ_CHUNK)
        writer.write((f"GET /api/v1/stream/{conversation_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {self.api_key}\r\nAccept: text/event-stream\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"listener refused: {head.splitlines()[0].decode()}")
        self.connections.append((reader, writer))
        self.readers.append(asyncio.create_task(self._read(reader)))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(READ_CHUNK):
            self.heartbeats += chunk.count(b": keep-alive")
        self.closed_by_server += 1

    @property
    def alive(self) -> int:
        return sum(1 for task in self.readers if not task.done())

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        for _, writer in self.connections:
            writer.close()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.connections.clear()
        self.readers.clear()


def raise_own_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        raise SystemExit(f"this client needs {needed} open files; the hard limit is {hard} (ulimit -Hn)")


class Command(StrEnum):
    COUNT = "count"
    CLOSE = "close"


def hold_listeners(port: int, api_key: str, conversation_ids: list[str], pipe: Connection) -> None:
    """The body of the listeners' own process: open them, then answer COUNT with (alive, heartbeats) until CLOSE."""
    raise_own_open_file_limit(len(conversation_ids) + 1024)

    async def run() -> None:
        tabs = IdleListeners(port, api_key)
        await tabs.open(conversation_ids)
        pipe.send((tabs.alive, tabs.heartbeats))
        while await asyncio.to_thread(pipe.recv) != Command.CLOSE:
            pipe.send((tabs.alive, tabs.heartbeats))
        await tabs.close()
        pipe.send((0, tabs.heartbeats))

    asyncio.run(run())


class ListenerProcess:
    """The idle listeners in a process of their own, so that the chat load's client shares no event loop with
    10,000 sockets (on 2 cores, the client's own loop would otherwise be a confounder)."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.pipe: Connection | None = None
        self.process: multiprocessing.process.BaseProcess | None = None

    async def open(self, conversation_ids: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=hold_listeners, args=(self.port, self.api_key, conversation_ids, child),
                                       name="idle-listeners")
        self.process.start()
        await asyncio.to_thread(self.pipe.recv)

    async def count(self) -> tuple[int, int]:
        """(listeners alive, keep-alives received so far)."""
        assert self.pipe is not None
        self.pipe.send(Command.COUNT)
        alive, heartbeats = await asyncio.to_thread(self.pipe.recv)
        return alive, heartbeats

    async def close(self) -> None:
        assert self.pipe is not None and self.process is not None
        self.pipe.send(Command.CLOSE)
        await asyncio.to_thread(self.pipe.recv)
        await asyncio.to_thread(self.process.join, 60)


async def make_conversations(server: ServerProcess, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=CONVERSATION_BATCH)) as http:
        ids: list[str] = []
        while len(ids) < count:
            batch = min(CONVERSATION_BATCH, count - len(ids))
            made = await asyncio.gather(*(http.post("/api/v1/conversations", json={"title": "tab"})
                                          for _ in range(batch)), return_exceptions=True)
            # A pooled connection the server closed as it was reused (ReadError) costs one conversation: the
            # loop makes another.
            ids.extend(response.json()["id"] for response in made if isinstance(response, httpx.Response))
    return ids


async def chat_load(server: ServerProcess, jobs: list[Job], concurrency: int) -> dict[str, float]:
    async with http_client(concurrency, server.api_key) as http:
        results, duration = await run_closed_loop(http_sender(http, server.base_url + "/v1/chat/completions"),
                                                  jobs, concurrency)
    summary = summarize(results, duration)
    return {"output_tok_s": summary.output_throughput, "ttft_median_ms": summary.ttft_ms["p50"],
            "failed": summary.failed}


async def measure(config: Path, overrides: dict[str, str], folder: Path, listeners: int, repeats: int,
                  window_s: float, loads: Callable[[int], list[Job]], warmup: list[Job],
                  concurrency: int) -> list[Repeat]:
    """`loads(n)`: the n-th chat load's jobs. Each load gets prompts of its own, so that none finds the prefix cache
    warmed by another (the load that ran second would otherwise be favoured)."""
    overrides = {"max_sse_listeners": str(listeners + 1024), "max_sse_listeners_per_key": "0",
                 "max_sse_listeners_per_user": "0", **overrides}
    server = await codeface_server(config, overrides, folder, "listeners")
    server.start()
    try:
        assert server.process is not None and server.api_key is not None
        process = psutil.Process(server.process.pid)
        await chat_load(server, warmup, concurrency)
        conversation_ids = await make_conversations(server, listeners)
        repeats_done: list[Repeat] = []
        for index in range(repeats):
            # Alternate which chat run goes first, so that drift (heat, page cache) does not favour one side.
            with_first = index % 2 == 0
            chat: dict[bool, dict[str, float]] = {}
            if not with_first:
                chat[False] = await chat_load(server, loads(2 * index), concurrency)
            await asyncio.sleep(SETTLE_S)
            idle = await measure_window(process, window_s)
            tabs = ListenerProcess(server.port, server.api_key)
            await tabs.open(conversation_ids)
            await asyncio.sleep(SETTLE_S)
            _, heartbeats_before = await tabs.count()
            listening = await measure_window(process, window_s)
            _, heartbeats_after = await tabs.count()
            chat[True] = await chat_load(server, loads(2 * index + 1), concurrency)
            alive, _ = await tabs.count()
            await tabs.close()
            await asyncio.sleep(SETTLE_S)
            if with_first:
                chat[False] = await chat_load(server, loads(2 * index), concurrency)
            repeats_done.append(Repeat(idle, listening, alive, heartbeats_after - heartbeats_before, chat[True],
                                       chat[False]))
            print(f"repeat {index + 1}: {repeats_done[-1]}", flush=True)
        return repeats_done
    finally:
        server.stop()


PER_MINUTE = 6  # ten-second windows in a minute


def spread(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f} - {max(values):.{digits}f}"


def report(repeats: list[Repeat], listeners: int, context: dict[str, Any]) -> str:
    idle_cpu = [r.idle.cpu_s_per_10s for r in repeats]
    extra_cpu = [r.listening.cpu_s_per_10s - r.idle.cpu_s_per_10s for r in repeats]
    # The first repeat's growth: later ones reuse the memory the first set of listeners left in Python's arenas.
    rss_first = (repeats[0].listening.rss_mib - repeats[0].idle.rss_mib) * 1024 / listeners
    tok_ratio = [r.chat_with["output_tok_s"] / r.chat_without["output_tok_s"] for r in repeats]
    ttft_ratio = [r.chat_with["ttft_median_ms"] / r.chat_without["ttft_median_ms"] for r in repeats]
    rows = [
        ["API process CPU-s per 10 s (per minute), no listeners",
         f"{spread(idle_cpu, 3)} ({spread([v * PER_MINUTE for v in idle_cpu], 2)})"],
        [f"... with {listeners} idle listeners, above idle",
         f"{spread(extra_cpu, 3)} ({spread([v * PER_MINUTE for v in extra_cpu], 2)})"],
        ["engine processes CPU-s per 10 s, no listeners / with",
         f"{spread([r.idle.engine_cpu_s_per_10s for r in repeats])} / "
         f"{spread([r.listening.engine_cpu_s_per_10s for r in repeats])}"],
        ["RSS MiB, no listeners / with", f"{spread([r.idle.rss_mib for r in repeats], 0)} / "
         f"{spread([r.listening.rss_mib for r in repeats], 0)}"],
        ["RSS growth per listener, KiB (first repeat)", f"{rss_first:.1f}"],
        ["listeners alive at the end / heartbeats received in the window",
         f"{min(r.listeners_alive for r in repeats)} / {spread([float(r.heartbeats_received) for r in repeats], 0)}"],
        ["chat output tok/s, with listeners / without", f"{spread([r.chat_with['output_tok_s'] for r in repeats], 1)}"
         f" / {spread([r.chat_without['output_tok_s'] for r in repeats], 1)}"],
        ["chat median TTFT ms, with / without", f"{spread([r.chat_with['ttft_median_ms'] for r in repeats], 0)} / "
         f"{spread([r.chat_without['ttft_median_ms'] for r in repeats], 0)}"],
        ["tok/s ratio with/without (per repeat)", spread(tok_ratio)],
        ["TTFT ratio with/without (per repeat)", spread(ttft_ratio)],
        ["failed chat requests", str(sum(r.chat_with["failed"] + r.chat_without["failed"] for r in repeats))],
    ]
    lines = [f"{key}: {value}" for key, value in context.items()]
    return "\n".join(lines) + "\n\n" + markdown_table(["measure (min - max over repeats)", "value"], rows)
