"""`python -m loadtests capacity`: the knee of each system (loadtests.capacity) side by side, each on a fresh server
from one profile (the same engine arguments), with Poisson arrivals of the same workload; a table and plots of
goodput and latency percentiles against offered rate. CodeFace runs with SLO-aware admission set to the SLO."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.capacity import PERCENTILES, Knee, Measure, Objective, Trial, capacity, mean_ci
from loadtests.report import markdown_table, text_table
from loadtests.runner import http_client, http_sender, run_closed_loop, run_open_loop
from loadtests.systems import ROOT, ServerProcess, codeface_server, profile_engine_config, vllm_server
from loadtests.workload import Job, SendChat

SYSTEMS = ("codeface", "vllm", "engine")


@dataclass
class CapacityPlan:
    config_file: Path
    overrides: dict[str, str]
    objective: Objective
    repeats: int
    start: float
    max_rate: float
    precision: float
    beyond: tuple[float, ...]
    duration_s: float        # of each trial's arrivals (its request count: rate x duration, at least min_requests)
    min_requests: int
    seed: int
    workload: dict[str, Any]  # build_jobs's arguments besides the count and the seed
    out_dir: Path


@dataclass
class SystemCapacity:
    start_s: float
    knees: list[Knee]
    trials: dict[float, list[Trial]]


JobsFor = Callable[[int, int], list[Job]]


def jobs_maker(workload: dict[str, Any]) -> JobsFor:
    from loadtests.workload import build_jobs

    def make(count: int, seed: int) -> list[Job]:
        return build_jobs(workload["kind"], count, input_len=workload["input_len"],
                          output_len=workload["output_len"], turns=workload.get("turns", 4), seed=seed,
                          tokenizer=workload["tokenizer"], model=workload.get("model"),
                          extra=workload.get("extra"))

    return make


def open_loop_measure(send: SendChat, plan: CapacityPlan, jobs_for: JobsFor) -> Measure:
    """One trial: Poisson arrivals at `rate` of fresh jobs (a seed per rate and repeat: no trial profits from
    another's prompts in the prefix cache), all waited for."""
    async def measure(rate: float, repeat: int) -> Trial:
        count = max(plan.min_requests, round(rate * plan.duration_s))
        seed = plan.seed + 1000 * repeat + round(rate * 1000)
        results, duration = await run_open_loop(send, jobs_for(count, seed), rate, seed=seed,
                                                max_duration_s=plan.duration_s * 4, label=f"rate={rate:.3f}")
        trial = Trial.of(rate, results, duration, plan.objective.ttft_ms, plan.objective.tpot_ms)
        print(f"  rate {rate:.3f}/s #{repeat + 1}: served {trial.served}/{trial.sent}, refused {trial.refused}, "
              f"goodput {trial.goodput:.3f}/s, p90 TTFT {trial.ttft_at(90):.0f} ms, p90 TPOT "
              f"{trial.tpot_at(90):.0f} ms", file=sys.stderr, flush=True)
        return trial

    return measure


async def search_all(measure: Measure, plan: CapacityPlan) -> tuple[list[Knee], dict[float, list[Trial]]]:
    return await capacity(measure, plan.objective, repeats=plan.repeats, start=plan.start, max_rate=plan.max_rate,
                          precision=plan.precision, beyond=plan.beyond)


async def measure_server(server: ServerProcess, plan: CapacityPlan) -> SystemCapacity:
    start_s = server.start()
    try:
        jobs_for = jobs_maker(plan.workload)
        async with http_client(512, server.api_key) as http:
            send = http_sender(http, server.base_url + "/v1/chat/completions")
            await run_closed_loop(send, jobs_for(4, plan.seed + 999), 2)
            knees, trials = await search_all(open_loop_measure(send, plan, jobs_for), plan)
        return SystemCapacity(start_s, knees, trials)
    finally:
        server.stop()


def plan_json(plan: CapacityPlan) -> dict[str, Any]:
    return {**dataclasses.asdict(plan), "config_file": str(plan.config_file), "out_dir": str(plan.out_dir)}


def plan_from_json(data: dict[str, Any]) -> CapacityPlan:
    return CapacityPlan(**{**data, "config_file": Path(data["config_file"]), "out_dir": Path(data["out_dir"]),
                           "objective": Objective(**data["objective"]), "beyond": tuple(data["beyond"])})


def capacity_json(result: SystemCapacity) -> dict[str, Any]:
    return {"start_s": result.start_s, "knees": [dataclasses.asdict(k) for k in result.knees],
            "trials": {str(rate): [dataclasses.asdict(t) for t in trials] for rate, trials in result.trials.items()}}


def capacity_from_json(data: dict[str, Any]) -> SystemCapacity:
    knees = [Knee(**{**k, "objective": Objective(**k["objective"])}) for k in data["knees"]]
    return SystemCapacity(data["start_s"], knees, {float(rate): [Trial(**t) for t in trials]
                                                   for rate, trials in data["trials"].items()})


def measure_raw_engine(plan: CapacityPlan) -> SystemCapacity:
    """The raw engine searches in a process of its own (loadtests.raw_engine --capacity): no HTTP."""
    plan_file, out_file = plan.out_dir / "raw-engine-capacity-plan.json", plan.out_dir / "raw-engine-capacity.json"
    plan_file.write_text(json.dumps(plan_json(plan)))
    sets = [item for key, value in plan.overrides.items() for item in ("--set", f"{key}={value}")]
    with open(plan.out_dir / "engine.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "loadtests.raw_engine", "--config", str(plan.config_file), *sets,
                        "--capacity", str(plan_file), "--out", str(out_file)],
                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True, start_new_session=True)
    return capacity_from_json(json.loads(out_file.read_text()))


async def measure_system(system: str, plan: CapacityPlan) -> SystemCapacity:
    if system == "vllm":
        return await measure_server(vllm_server(profile_engine_config(plan.config_file, plan.overrides),
                                                plan.out_dir), plan)
    if system == "codeface":
        budgets = {"slo_ttft_s": str(plan.objective.ttft_ms / 1000), "slo_tpot_s": str(plan.objective.tpot_ms / 1000)}
        return await measure_server(await codeface_server(plan.config_file, {**budgets, **plan.overrides},
                                                          plan.out_dir, "capacity"), plan)
    if system == "engine":
        return measure_raw_engine(plan)
    raise ValueError(f"unknown system {system!r}")


HEADER = ["system", "rate/s", "goodput/s mean ±95%", "served %", "refused %", "p99 refusal ms", "p90 TTFT ms",
          "p99 TTFT ms", "p90 TPOT ms", "p99 TPOT ms", "meets p90", "meets p99"]


def cell_ms(value: float) -> str:
    return "unserved" if value == float("inf") else f"{value:.0f}"


def refusal_p99(refusal_ms: list[float]) -> str:
    """How fast refusals came, over every repeat: the issue's bar is 50 ms at p99."""
    return f"{float(np.percentile(refusal_ms, 99)):.1f}" if refusal_ms else "-"


def rows(name: str, result: SystemCapacity) -> list[list[str]]:
    """One row per rate; percentiles are the worst repeat's (a rate passes only if every repeat does)."""
    out = []
    objective = result.knees[0].objective
    for rate, trials in result.trials.items():
        goodput, half = mean_ci([t.goodput for t in trials])
        sent = sum(t.sent for t in trials) or 1
        out.append([name, f"{rate:.3f}", f"{goodput:.3f} ± {half:.3f}",
                    f"{100 * sum(t.served for t in trials) / sent:.0f}",
                    f"{100 * sum(t.refused for t in trials) / sent:.0f}",
                    refusal_p99([ms for t in trials for ms in t.refusal_ms]),
                    *(cell_ms(max(getattr(t, f"{metric}_at")(p) for t in trials))
                      for metric, p in (("ttft", 90), ("ttft", 99), ("tpot", 90), ("tpot", 99))),
                    *("yes" if all(objective.at(p).met_by(t) for t in trials) else "no" for p in PERCENTILES)])
    return out


def knee_lines(results: dict[str, SystemCapacity]) -> list[str]:
    lines = []
    for name, result in results.items():
        for knee in result.knees:
            bound = f", fails at {knee.failed_at:.3f}/s" if knee.failed_at is not None else ", the search's maximum"
            lines.append(f"{name}: p{knee.objective.percentile} knee {knee.rate:.3f} requests/s{bound}")
    return lines


def plot(out_dir: Path, results: dict[str, SystemCapacity], objective: Objective) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (good, ttft, tpot) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, result in results.items():
        rates = list(result.trials)
        stats = [mean_ci([t.goodput for t in trials]) for trials in result.trials.values()]
        good.errorbar(rates, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", capsize=3, label=name)
        for axis, metric in ((ttft, "ttft"), (tpot, "tpot")):
            for p, style in ((90, "-"), (99, ":")):
                values = [max(getattr(t, f"{metric}_at")(p) for t in trials) for trials in result.trials.values()]
                axis.plot(rates, [v if v != float("inf") else float("nan") for v in values], style, marker="o",
                          label=f"{name} p{p}")
    good.set(title="goodput against offered rate", xlabel="offered requests/s", ylabel="requests/s within SLO")
    ttft.axhline(objective.ttft_ms, color="grey", linestyle="--", label="SLO")
    tpot.axhline(objective.tpot_ms, color="grey", linestyle="--", label="SLO")
    ttft.set(title="TTFT (of all sent; unserved not drawn)", xlabel="offered requests/s", ylabel="ms", yscale="log")
    tpot.set(title="TPOT", xlabel="offered requests/s", ylabel="ms", yscale="log")
    for axis in (good, ttft, tpot):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    path = out_dir / "capacity.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results: dict[str, SystemCapacity], plan: CapacityPlan, context: dict[str, Any]) -> str:
    table_rows = [row for name, result in results.items() for row in rows(name, result)]
    (plan.out_dir / "results.json").write_text(json.dumps(
        {"context": context, "systems": {name: capacity_json(r) for name, r in results.items()}}, indent=2))
    image = plot(plan.out_dir, results, plan.objective)
    knees = knee_lines(results)
    report = ["# Capacity: " + ", ".join(results), "", "```", json.dumps(context, indent=2), "```", "",
              *[f"- {line}" for line in knees], "",
              "Percentiles are over every request sent (refused and failed ones miss the SLO), the worst of the "
              "repeats; goodput is the mean over repeats with its 95% confidence interval.", "",
              markdown_table(HEADER, table_rows), "", f"![capacity]({image.name})"]
    (plan.out_dir / "report.md").write_text("\n".join(report) + "\n")
    return "\n".join([text_table(HEADER, table_rows), "", *knees])
