"""`python -m loadtests tenants`: several tenants at once, each with its own API key, arrival process and lengths,
reported per tenant (TTFT p50/p99, output tok/s, goodput). The `noisy-neighbour` scenario: a heavy tenant keeps
the engine saturated (closed loop) while a light one sends one request every few seconds; its TTFT is compared
with its floor (the same requests with no flood) on vllm serve, CodeFace with fairness off and CodeFace with
fairness on, each on a fresh engine with the same engine arguments, repeated in alternating order."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.metrics import RequestResult
from loadtests.report import markdown_table
from loadtests.runner import http_client, http_sender, run_closed_loop
from loadtests.scrape import Samples, gained, scrape
from loadtests.systems import ServerProcess, codeface_server, profile_engine_config, vllm_server
from loadtests.workload import Job, build_jobs

# The systems a noisy-neighbour run compares, and the settings each stands for (vllm serve: its default order).
SYSTEMS: dict[str, dict[str, str]] = {
    "vllm": {"scheduling_policy": "fcfs"},
    "codeface-fcfs": {"fairness": "off", "scheduling_policy": "fcfs"},
    "codeface-fair": {"fairness": "on", "scheduling_policy": "priority"},
}


@dataclass
class Tenant:
    """One tenant's traffic: a closed loop at `concurrency`, or one request every `every_s` seconds."""

    name: str
    input_len: int
    output_len: int
    count: int
    concurrency: int = 0
    every_s: float = 0.0
    results: list[RequestResult] = field(default_factory=list)
    duration_s: float = 0.0

    def jobs(self, tokenizer: str, seed: int) -> list[Job]:
        return build_jobs("fixed", self.count, input_len=self.input_len, output_len=self.output_len, turns=1,
                          seed=seed, tokenizer=tokenizer)


def same_engine_step(config: Path, overrides: dict[str, str], systems: list[str]) -> dict[str, dict[str, str]]:
    """Each system's overrides: the engine step CodeFace with fair share derives itself (where the profile leaves
    it unset) is given to the other systems, so that all run the same engine arguments and differ only in their
    queue's order."""
    per_system = {name: overrides for name in systems}
    if "codeface-fair" not in systems or "max_num_batched_tokens" in overrides:
        return per_system
    step = profile_engine_config(config, {**overrides, **SYSTEMS["codeface-fair"]}).derived_step_tokens
    if step is None:
        return per_system
    return {name: overrides if name == "codeface-fair" else {**overrides, "max_num_batched_tokens": str(step)}
            for name in systems}


# The light tenant's generations as CodeFace's metrics see them: share class "0" (none of its own in flight) from
# admission to the first token, and the part of it spent in the engine's queue (vLLM's scheduled - queued).
LIGHT_SHARE = 'share="0"'
SERVER_TIMES = {"server_ttft": "codeface_tenant_time_to_first_token_seconds",
                "engine_queue": "codeface_tenant_queue_time_seconds"}


def server_means(before: tuple[Samples, Samples] | None, after: tuple[Samples, Samples] | None) -> dict[str, float]:
    """Mean seconds of each SERVER_TIMES family for share class "0" over a phase (empty without /metrics): set
    against the client's TTFT, what the light tenant's requests spent before admission and in the engine."""
    moved = gained(before, after)
    means = {}
    for name, family in SERVER_TIMES.items():
        sums = [value for key, value in moved.items() if key.startswith(f"{family}_sum{{") and LIGHT_SHARE in key]
        counts = [value for key, value in moved.items() if key.startswith(f"{family}_count{{") and LIGHT_SHARE in key]
        if sum(counts):
            means[name] = sum(sums) / sum(counts)
    return means


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


async def paced(send: Any, jobs: list[Job], every_s: float, stop: asyncio.Event | None = None
                ) -> tuple[list[RequestResult], float]:
    """One job every `every_s` seconds, whatever the previous one is doing (open loop)."""
    began = time.perf_counter()
    tasks = []
    for job in jobs:
        if stop is not None and stop.is_set():
            break
        tasks.append(asyncio.create_task(job.run(send)))
        await asyncio.sleep(every_s)
    results = [r for batch in await asyncio.gather(*tasks) for r in batch]
    return results, time.perf_counter() - began


async def noisy_neighbour(server: ServerProcess, keys: tuple[str | None, str | None], heavy: Tenant, light: Tenant,
                          tokenizer: str, seed: int, ramp_s: float) -> dict[str, Any]:
    """The light tenant alone (its floor), then beside the heavy tenant's flood."""
    url = server.base_url + "/v1/chat/completions"
    # A connection for every light request: where they outlast the pace (a slow machine) they overlap, and a
    # smaller pool queued them in the client, its wait counted as the server's TTFT.
    async with http_client(heavy.concurrency, keys[0]) as heavy_http, \
            http_client(light.count, keys[1]) as light_http:
        heavy_send, light_send = http_sender(heavy_http, url), http_sender(light_http, url)
        await run_closed_loop(light_send, light.jobs(tokenizer, seed + 7)[:2], 1)  # warm-up
        scraped = [await scrape(light_http, server.base_url)]
        floor, _ = await paced(light_send, light.jobs(tokenizer, seed), light.every_s)
        scraped.append(await scrape(light_http, server.base_url))
        # The flood starts new requests until the light tenant's last one has been sent, then drains.
        flood = asyncio.create_task(run_closed_loop(heavy_send, heavy.jobs(tokenizer, seed + 1), heavy.concurrency,
                                                    max_duration_s=ramp_s + light.count * light.every_s))
        await asyncio.sleep(ramp_s)  # the heavy tenant's queue fills
        scraped.append(await scrape(light_http, server.base_url))
        beside, _ = await paced(light_send, light.jobs(tokenizer, seed + 2), light.every_s)
        scraped.append(await scrape(light_http, server.base_url))
        heavy_results, heavy_s = await flood
    return {
        "floor_ttft": [r.ttft for r in floor if r.ok], "flood_ttft": [r.ttft for r in beside if r.ok],
        "floor_server": server_means(scraped[0], scraped[1]), "flood_server": server_means(scraped[2], scraped[3]),
        "light_failed": sum(not r.ok for r in floor + beside), "heavy_failed": sum(not r.ok for r in heavy_results),
        "heavy_tok_s": sum(r.output_tokens for r in heavy_results if r.ok) / heavy_s,
    }


async def run_system(name: str, config: Path, overrides: dict[str, str], folder: Path, heavy: Tenant, light: Tenant,
                     tokenizer: str, seed: int, ramp_s: float) -> dict[str, Any]:
    settings = SYSTEMS[name]
    if name == "vllm":
        server = vllm_server(profile_engine_config(config, {**overrides, **settings}), folder)
        keys: tuple[str | None, str | None] = (None, None)
    else:
        # The tenants' keys are not an admin's: /metrics is opened for the harness's scrapes (server_means).
        server = await codeface_server(config, {**overrides, **settings, "metrics_public": "true"}, folder,
                                       f"{name}-{seed}", keys=2)
        keys = (server.api_keys[0], server.api_keys[1])
    server.start()
    try:
        return await noisy_neighbour(server, keys, heavy, light, tokenizer, seed, ramp_s)
    finally:
        server.stop()


def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    return f"{min(values) * scale:.{digits}f} - {max(values) * scale:.{digits}f}" if values else "-"


def server_spread(measured: list[dict[str, Any]], phase: str) -> str:
    """The light tenant's mean TTFT from admission and mean engine queue time, as the server measured them."""
    parts = [spread([run[phase][name] for run in measured if name in run[phase]], 1000)
             for name in SERVER_TIMES]
    return " / ".join(parts) if any(part != "-" for part in parts) else "-"


def report(runs: dict[str, list[dict[str, Any]]], context: dict[str, Any]) -> str:
    rows = []
    fcfs_tok_s = [run["heavy_tok_s"] for run in runs.get("codeface-fcfs", [])]
    for name, measured in runs.items():
        floor_p50 = [percentile(run["floor_ttft"], 50) for run in measured]
        flood_p50 = [percentile(run["flood_ttft"], 50) for run in measured]
        flood_p99 = [percentile(run["flood_ttft"], 99) for run in measured]
        floor_p99 = [percentile(run["floor_ttft"], 99) for run in measured]
        ratio = [p99 / floor for p99, floor in zip(flood_p99, floor_p99, strict=True)]
        over_median = [p99 / floor for p99, floor in zip(flood_p99, floor_p50, strict=True)]
        tok_s = [run["heavy_tok_s"] for run in measured]
        vs_fcfs = (spread([t / statistics.median(fcfs_tok_s) for t in tok_s], digits=2)
                   if fcfs_tok_s else "-")
        rows.append([name, spread(floor_p50, 1000), spread(floor_p99, 1000), spread(flood_p50, 1000),
                     spread(flood_p99, 1000), spread(ratio, digits=1), spread(over_median, digits=2),
                     server_spread(measured, "floor_server"), server_spread(measured, "flood_server"),
                     spread(tok_s, digits=1), vs_fcfs,
                     str(sum(run["light_failed"] + run["heavy_failed"] for run in measured))])
    header = ["system", "light TTFT p50 ms, no flood", "p99, no flood", "light TTFT p50 ms, flood", "p99, flood",
              "p99 flood / p99 floor", "p99 flood / p50 floor", "server mean ms, no flood (TTFT / queue)",
              "server mean ms, flood (TTFT / queue)", "heavy output tok/s", "heavy tok/s vs fcfs (median)", "failed"]
    lines = [f"{key}: {value}" for key, value in context.items()]
    return "\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n\n(min - max over repeats)"


async def compare(config: Path, overrides: dict[str, dict[str, str]], folder: Path, systems: list[str], repeats: int,
                  heavy: Tenant, light: Tenant, tokenizer: str, ramp_s: float) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for repeat in range(repeats):
        order = systems if repeat % 2 == 0 else list(reversed(systems))
        for name in order:
            measured = await run_system(name, config, overrides[name], folder, heavy, light, tokenizer, repeat,
                                        ramp_s)
            runs[name].append(measured)
            print(f"repeat {repeat + 1} {name}: light TTFT p50 floor "
                  f"{percentile(measured['floor_ttft'], 50) * 1000:.0f} ms, flood "
                  f"{percentile(measured['flood_ttft'], 50) * 1000:.0f} ms (p99 "
                  f"{percentile(measured['flood_ttft'], 99) * 1000:.0f}); heavy {measured['heavy_tok_s']:.1f} tok/s; "
                  f"server means (s) {measured['floor_server']} alone, {measured['flood_server']} under the flood",
                  flush=True)
    return runs
