"""`python -m loadtests capacity`'s search, on a fake system whose capacity the test knows: the knee is bracketed
within the precision asked, a rate passes only when every repeat meets the objective, refused requests count as
missing it, the p99 search reuses the p90 one's trials, and the edges (nothing passes; everything does)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from loadtests.capacity import Objective, Search, Trial, capacity, over_all
from loadtests.metrics import RequestResult

T = TypeVar("T")
SLO = Objective(ttft_ms=1000, tpot_ms=100)


def fake_trial(rate: float, capacity_rps: float, sent: int = 100) -> Trial:
    """Below capacity every request takes 200 ms to its first token; past it, the queue grows without bound; the
    slowest tenth already misses the SLO past 0.8x capacity (p90 misses at 1x, p99 at 0.8x)."""
    load = rate / capacity_rps
    ttft = [200.0 if load <= 1 else 5000.0 for _ in range(sent - 10)]
    tail = [200.0 if load <= 0.8 else 2000.0 for _ in range(10)]
    return Trial(rate, sent, sent / rate, ttft + tail, [50.0] * sent, good=sent)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_the_knee_is_bracketed_within_the_precision() -> None:
    calls: list[float] = []

    async def measure(rate: float, _repeat: int) -> Trial:
        calls.append(rate)
        return fake_trial(rate, capacity_rps=3.3)

    knee = run(Search(measure, repeats=1).find_knee(SLO, start=0.5, max_rate=64, precision=0.05))
    assert knee.failed_at is not None
    assert knee.rate <= 3.3 < knee.failed_at and knee.failed_at / knee.rate - 1 <= 0.05
    assert len(calls) <= 12


def test_a_rate_passes_only_if_every_repeat_does() -> None:
    async def measure(rate: float, repeat: int) -> Trial:
        # The second repeat of each rate is noisier: it saturates at 2 requests/s.
        return fake_trial(rate, capacity_rps=4.0 if repeat == 0 else 2.0)

    knee = run(Search(measure, repeats=2).find_knee(SLO, start=1, max_rate=64, precision=0.1))
    assert knee.rate <= 2.0 < (knee.failed_at or 0)


def test_p99_knee_is_lower_and_reuses_the_p90_trials() -> None:
    measured: list[tuple[float, int]] = []

    async def measure(rate: float, repeat: int) -> Trial:
        measured.append((rate, repeat))
        return fake_trial(rate, capacity_rps=5.0)

    knees, trials = run(capacity(measure, SLO, repeats=2, start=1, max_rate=64, precision=0.1, beyond=(1.5, 2.0)))
    p90, p99 = knees
    assert p90.objective.percentile == 90 and p99.objective.percentile == 99
    assert p90.rate <= 5.0 < (p90.failed_at or 0)
    assert p99.rate <= 4.0 < (p99.failed_at or 0) and p99.rate < p90.rate
    assert len(measured) == len(set(measured)) == 2 * len(trials)  # no rate measured twice
    assert round(p90.rate * 2.0, 4) in trials and round(p90.rate * 1.5, 4) in trials


def test_nothing_passes_or_everything_does() -> None:
    async def hopeless(rate: float, _repeat: int) -> Trial:
        return Trial(rate, 10, 10 / rate)  # every request refused

    knee = run(Search(hopeless, repeats=1).find_knee(SLO, start=1, max_rate=8))
    assert knee.rate == 0.0 and knee.failed_at is not None and knee.failed_at < 1 / 32

    async def boundless(rate: float, _repeat: int) -> Trial:
        return fake_trial(rate, capacity_rps=1e9)

    knee = run(Search(boundless, repeats=1).find_knee(SLO, start=1, max_rate=8))
    assert knee.rate == 8 and knee.failed_at is None


def test_refused_requests_miss_every_percentile() -> None:
    assert over_all([100.0] * 95, 100, 90) == 100.0
    assert over_all([100.0] * 89, 100, 90) == math.inf       # 11 of 100 unserved: p90 missed
    results = [RequestResult(ok=True, latency=1.0, ttft=0.2, output_tokens=9)] * 8 + [
        RequestResult(ok=False, error="http 503", status=503), RequestResult(ok=False, error="ReadTimeout")]
    trial = Trial.of(2.0, results, duration_s=5.0, ttft_ms=500, tpot_ms=50)
    assert (trial.sent, trial.served, trial.refused, trial.failed, trial.good) == (10, 8, 1, 1, 0)
    assert trial.tpot_ms == [100.0] * 8 and trial.ttft_at(80) == 200.0 and trial.ttft_at(90) == math.inf
    assert trial.goodput == 0.0
    assert Trial.of(2.0, results, 5.0, ttft_ms=500, tpot_ms=150).goodput == 8 / 5


def test_the_report_table_plot_and_json_round_trip(tmp_path: Path) -> None:
    from loadtests.capacity_run import (
        CapacityPlan,
        SystemCapacity,
        capacity_from_json,
        capacity_json,
        plan_from_json,
        plan_json,
        write_report,
    )

    async def measure(rate: float, _repeat: int) -> Trial:
        return fake_trial(rate, capacity_rps=2.0)

    knees, trials = run(capacity(measure, SLO, repeats=2, start=1, max_rate=8, precision=0.2, beyond=(2.0,)))
    result = SystemCapacity(12.0, knees, trials)
    assert capacity_from_json(json.loads(json.dumps(capacity_json(result)))) == result
    plan = CapacityPlan(Path("configs/cpu.yaml"), {}, SLO, 2, 1, 8, 0.2, (2.0,), 10, 5, 0,
                        {"kind": "fixed", "input_len": 16, "output_len": 8, "tokenizer": "t"}, tmp_path)
    assert plan_from_json(json.loads(json.dumps(plan_json(plan)))) == plan
    table = write_report({"fake": result}, plan, {"command": "test"})
    assert "fake: p90 knee 2.000 requests/s, fails at 2.250/s" in table and "fake: p99 knee 1.500" in table
    assert table.count(" yes ") >= 2 and "5000" in table  # past the knee: the queue's TTFT
    assert (tmp_path / "capacity.png").stat().st_size > 0
    assert "![capacity](capacity.png)" in (tmp_path / "report.md").read_text()
    assert set(json.loads((tmp_path / "results.json").read_text())["systems"]) == {"fake"}
