"""The side-by-side benchmark: vllm serve, CodeFace and the raw in-process engine, same engine arguments, same
workload, each on a fresh engine, repeated in alternating order so that a ratio is claimed only above the noise."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.metrics import RequestResult, Summary, summarize
from loadtests.report import markdown_table, plot, text_table
from loadtests.runner import http_client, http_sender, run_closed_loop
from loadtests.systems import ROOT, ServerProcess, codeface_server, profile_engine_config, vllm_server
from loadtests.workload import Job

SYSTEMS = ("vllm", "codeface", "engine")


@dataclass
class Plan:
    config_file: Path
    overrides: dict[str, str]
    warmup: list[Job]
    levels: dict[int, list[Job]]
    max_duration_s: float
    out_dir: Path


@dataclass
class Measured:
    start_s: float
    levels: dict[int, tuple[Summary, list[RequestResult]]]


async def measure_server(server: ServerProcess, plan: Plan) -> Measured:
    start_s = server.start()
    try:
        url = server.base_url + "/v1/chat/completions"
        levels = {}
        async with http_client(max(plan.levels), server.api_key) as http:
            send = http_sender(http, url)
            await run_closed_loop(send, plan.warmup, max(1, len(plan.warmup)))
            for concurrency, jobs in plan.levels.items():
                results, duration = await run_closed_loop(send, jobs, concurrency, max_duration_s=plan.max_duration_s,
                                                          label=f"{server.name} c={concurrency}")
                levels[concurrency] = (summarize(results, duration), results)
        return Measured(start_s, levels)
    finally:
        server.stop()


def measure_raw_engine(plan: Plan, run_id: str) -> Measured:
    plan_file = plan.out_dir / "raw-engine-plan.json"
    out_file = plan.out_dir / f"raw-engine-{run_id}.json"
    plan_file.write_text(json.dumps({
        "warmup": [dataclasses.asdict(job) for job in plan.warmup],
        "levels": [{"concurrency": c, "jobs": [dataclasses.asdict(job) for job in jobs]}
                   for c, jobs in plan.levels.items()],
        "max_duration_s": plan.max_duration_s,
    }))
    sets = [item for key, value in plan.overrides.items() for item in ("--set", f"{key}={value}")]
    with open(plan.out_dir / "engine.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "loadtests.raw_engine", "--config", str(plan.config_file), *sets,
                        "--plan", str(plan_file), "--out", str(out_file)],
                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True, start_new_session=True)
    report = json.loads(out_file.read_text())
    levels = {}
    for level in report["levels"]:
        results = [RequestResult(**r) for r in level["results"]]
        levels[level["concurrency"]] = (summarize(results, level["duration_s"]), results)
    return Measured(report["start_s"], levels)


async def measure(system: str, plan: Plan, run_id: str) -> Measured:
    if system == "vllm":
        return await measure_server(vllm_server(profile_engine_config(plan.config_file, plan.overrides),
                                                plan.out_dir), plan)
    if system == "codeface":
        return await measure_server(await codeface_server(plan.config_file, plan.overrides, plan.out_dir, run_id),
                                    plan)
    if system == "engine":
        return measure_raw_engine(plan, run_id)
    raise ValueError(f"unknown system {system!r}")


async def compare(plan: Plan, systems: list[str], repeats: int) -> dict[str, list[Measured]]:
    runs: dict[str, list[Measured]] = {name: [] for name in systems}
    for repeat in range(repeats):
        order = systems[repeat % len(systems):] + systems[:repeat % len(systems)]
        for system in order:
            began = time.perf_counter()
            measured = await measure(system, plan, f"{repeat}")
            runs[system].append(measured)
            figures = ", ".join(f"c={c}: {s.output_throughput:.1f} tok/s" for c, (s, _) in measured.levels.items())
            print(f"[run {repeat + 1}/{repeats}] {system}: start {measured.start_s:.1f} s; {figures} "
                  f"({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
    return runs


def _median(runs: list[Measured], concurrency: int, metric: str, stat: str | None = None) -> list[float]:
    values = []
    for run in runs:
        summary = run.levels[concurrency][0]
        value = getattr(summary, metric)
        values.append(value[stat] if stat else value)
    return values


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def _ratio(ours: list[float], theirs: list[float], higher_is_better: bool) -> str:
    ratio = statistics.median(ours) / statistics.median(theirs) if statistics.median(theirs) else float("nan")
    overlap = min(ours) <= max(theirs) and min(theirs) <= max(ours)
    if len(ours) < 2 or len(theirs) < 2:
        verdict = "one run: no noise estimate"
    elif overlap:
        verdict = "within noise"
    else:
        better = (min(ours) > max(theirs)) if higher_is_better else (max(ours) < min(theirs))
        verdict = "better" if better else "worse"
    return f"{ratio:.2f}x ({verdict})"


def tables(runs: dict[str, list[Measured]], concurrencies: list[int]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "conc", "out tok/s med [min-max]", "med TTFT ms", "p99 TTFT ms", "med ITL ms",
              "start s"]
    rows = []
    for system, measured in runs.items():
        for c in concurrencies:
            rows.append([system, str(c), _spread(_median(measured, c, "output_throughput")),
                         _spread(_median(measured, c, "ttft_ms", "p50")),
                         _spread(_median(measured, c, "ttft_ms", "p99")),
                         _spread(_median(measured, c, "itl_ms", "p50")),
                         f"{statistics.median(m.start_s for m in measured):.1f}"])
    if "codeface" in runs:
        for other in (name for name in runs if name != "codeface"):
            for c in concurrencies:
                ours, theirs = runs["codeface"], runs[other]
                rows.append([f"codeface / {other}", str(c),
                             _ratio(_median(ours, c, "output_throughput"), _median(theirs, c, "output_throughput"),
                                    True),
                             _ratio(_median(ours, c, "ttft_ms", "p50"), _median(theirs, c, "ttft_ms", "p50"), False),
                             _ratio(_median(ours, c, "ttft_ms", "p99"), _median(theirs, c, "ttft_ms", "p99"), False),
                             _ratio(_median(ours, c, "itl_ms", "p50"), _median(theirs, c, "itl_ms", "p50"), False),
                             ""])
    return header, rows


def write_results(runs: dict[str, list[Measured]], concurrencies: list[int], plan: Plan,
                  context: dict[str, Any]) -> str:
    header, rows = tables(runs, concurrencies)
    table = text_table(header, rows)
    (plan.out_dir / "results.json").write_text(json.dumps({
        "context": context,
        "runs": {name: [{"start_s": m.start_s,
                         "levels": {str(c): dataclasses.asdict(s) for c, (s, _) in m.levels.items()}}
                        for m in measured] for name, measured in runs.items()},
    }, indent=2))
    # Plots use each system's median run by throughput at the highest concurrency.
    top = max(concurrencies)
    chosen = {name: sorted(measured, key=lambda m: m.levels[top][0].output_throughput)[len(measured) // 2]
              for name, measured in runs.items()}
    images = plot(plan.out_dir, {n: {c: s for c, (s, _) in m.levels.items()} for n, m in chosen.items()},
                  {n: {top: m.levels[top][1]} for n, m in chosen.items()})
    report = [f"# Side-by-side: {', '.join(runs)}", "", "```", json.dumps(context, indent=2), "```", "",
              "Medians over repeats, [min-max] across repeats. A ratio is 'within noise' when the ranges overlap.",
              "", markdown_table(header, rows), ""] + [f"![{p.stem}]({p.name})" for p in images]
    (plan.out_dir / "report.md").write_text("\n".join(report) + "\n")
    return table
