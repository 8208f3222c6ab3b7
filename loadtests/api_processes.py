"""`python -m loadtests api-processes`: what several API processes over one engine core give: output tok/s and the
frontend's CPU seconds per 1,000 output tokens (every process but the engine core's) at one concurrency, for each
`api_processes` value, a fresh CodeFace server per run (auth on, limits and reply streams in Redis), repeats in
alternating order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtests.metrics import summarize
from loadtests.report import markdown_table
from loadtests.runner import http_client, http_sender, run_closed_loop
from loadtests.systems import codeface_server
from loadtests.workload import Job

# The launcher and its API processes are the frontend; the engine core (VLLM::EngineCore) and its workers are not.
API_PROCESS_TITLE = "VLLM::APIServer"


@dataclass
class Run:
    api_processes: int
    output_tok_s: float
    output_tokens: int
    frontend_cpu_s: float
    ttft_median_ms: float
    failed: int

    @property
    def cpu_s_per_1k_tokens(self) -> float:
        return self.frontend_cpu_s * 1000 / max(1, self.output_tokens)


def frontend_cpu_s(launcher: psutil.Process) -> float:
    """CPU seconds of the launcher and of its API processes (with one API process, the launcher is it)."""
    total = 0.0
    for process in [launcher, *launcher.children(recursive=True)]:
        try:
            if process is launcher or " ".join(process.cmdline()).startswith(API_PROCESS_TITLE):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def one_run(config: Path, overrides: dict[str, str], folder: Path, redis_url: str, count: int, index: int,
                  jobs: list[Job], warmup: list[Job], concurrency: int) -> Run:
    shared = {"rate_limit_storage": f"async+{redis_url}", "reply_streams_url": f"{redis_url}/0"}
    server = await codeface_server(config, {**overrides, **shared, "api_processes": str(count)}, folder,
                                   f"n{count}-{index}")
    server.start()
    try:
        assert server.process is not None and server.api_key is not None
        launcher = psutil.Process(server.process.pid)
        async with http_client(concurrency, server.api_key) as http:
            send = http_sender(http, server.base_url + "/v1/chat/completions")
            await run_closed_loop(send, warmup, concurrency)
            before = frontend_cpu_s(launcher)
            results, duration = await run_closed_loop(send, jobs, concurrency)
            used = frontend_cpu_s(launcher) - before
    finally:
        server.stop()
    summary = summarize(results, duration)
    tokens = sum(r.output_tokens for r in results if r.ok)
    run = Run(count, summary.output_throughput, tokens, used, summary.ttft_ms["p50"], summary.failed)
    print(f"api_processes={count} repeat {index + 1}: {run}", flush=True)
    return run


async def measure(config: Path, overrides: dict[str, str], folder: Path, redis_url: str, counts: list[int],
                  repeats: int, jobs: list[Job], warmup: list[Job], concurrency: int) -> list[Run]:
    runs: list[Run] = []
    for index in range(repeats):
        # Alternate the order, so that drift (heat, page cache) favours no setting.
        for count in counts if index % 2 == 0 else counts[::-1]:
            runs.append(await one_run(config, overrides, folder, redis_url, count, index, jobs, warmup, concurrency))
    return runs


def report(runs: list[Run], context: dict[str, Any]) -> str:
    def spread(values: list[float], digits: int) -> str:
        return f"{min(values):.{digits}f} - {max(values):.{digits}f}"

    rows = []
    for count in sorted({run.api_processes for run in runs}):
        mine = [run for run in runs if run.api_processes == count]
        rows.append([str(count), spread([r.output_tok_s for r in mine], 1), spread([r.ttft_median_ms for r in mine], 0),
                     spread([r.cpu_s_per_1k_tokens for r in mine], 3), str(sum(r.failed for r in mine))])
    lines = [f"{key}: {value}" for key, value in context.items()]
    return "\n".join(lines) + "\n\n" + markdown_table(
        ["api_processes", "output tok/s", "median TTFT ms", "frontend CPU-s per 1,000 output tokens", "failed"], rows)
