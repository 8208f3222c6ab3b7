"""Capacity: the knee, the highest Poisson request rate at which a system still serves a percentile (p90, p99) of
ALL requests sent within an SLO on time to first token and time per output token (a refused or failed request
misses it), found by a search over rates with repeats; with goodput and latency percentiles against offered rate.

The search (`find_knee`) takes any `measure(rate, repeat) -> Trial`: it doubles the rate from `start` until a rate
fails, then bisects between the last rate that passed and the first that failed until they are within `precision`
of each other. A rate passes when every repeat meets the objective. Measured rates are cached, so that the p99
knee's search (below the p90 one) reuses the p90 search's trials."""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loadtests.metrics import RequestResult

PERCENTILES = (90, 99)
# Two-sided 95% Student t quantiles by degrees of freedom (repeats - 1); past the table, the normal's.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass(frozen=True, slots=True)
class Objective:
    """The SLO, in milliseconds, that `percentile` percent of all requests sent must meet."""

    ttft_ms: float
    tpot_ms: float
    percentile: int = 90

    def met_by(self, trial: Trial) -> bool:
        return (trial.ttft_at(self.percentile) <= self.ttft_ms and trial.tpot_at(self.percentile) <= self.tpot_ms)

    def at(self, percentile: int) -> Objective:
        return Objective(self.ttft_ms, self.tpot_ms, percentile)


@dataclass(slots=True)
class Trial:
    """One run at one offered rate. Latencies in ms of the requests served; `sent` counts every request, so a
    percentile over all of them treats the unserved (refused, failed) as missing any SLO."""

    rate: float
    sent: int
    duration_s: float
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)  # per served request with 2 tokens or more
    refused: int = 0           # 429 and 503 (and Anthropic's 529): the server said no at once
    refusal_ms: list[float] = field(default_factory=list)  # how long each of those answers took
    failed: int = 0            # anything else unserved
    good: int = 0              # served within both SLOs

    @classmethod
    def of(cls, rate: float, results: list[RequestResult], duration_s: float, ttft_ms: float,
           tpot_ms: float) -> Trial:
        trial = cls(rate, len(results), duration_s)
        for result in results:
            if not result.ok:
                trial.refused += result.refused
                trial.failed += not result.refused
                if result.refused:
                    trial.refusal_ms.append(result.latency * 1000)
                continue
            trial.ttft_ms.append(result.ttft * 1000)
            tpot = result.tpot
            if tpot is not None:
                trial.tpot_ms.append(tpot * 1000)
            if result.ttft * 1000 <= ttft_ms and (tpot or 0.0) * 1000 <= tpot_ms:
                trial.good += 1
        return trial

    @property
    def served(self) -> int:
        return len(self.ttft_ms)

    @property
    def goodput(self) -> float:
        """Requests per second served within both SLOs (vllm bench serve's --goodput)."""
        return self.good / self.duration_s if self.duration_s else 0.0

    def ttft_at(self, percentile: int) -> float:
        return over_all(self.ttft_ms, self.sent, percentile)

    def tpot_at(self, percentile: int) -> float:
        # A served request with one token has no TPOT: it meets any TPOT SLO.
        return over_all(self.tpot_ms + [0.0] * (self.served - len(self.tpot_ms)), self.sent, percentile)


def over_all(values: list[float], sent: int, percentile: int) -> float:
    """The percentile over `sent` requests of which `values` were measured; the rest count as infinitely late
    (nearest rank, so that a percentile is met only when that many requests really met it)."""
    if sent == 0:
        return math.inf
    rank = math.ceil(percentile / 100 * sent)
    ordered = sorted(values)
    return ordered[rank - 1] if rank <= len(ordered) else math.inf


def mean_ci(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval (0 with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


Measure = Callable[[float, int], Awaitable[Trial]]


@dataclass(slots=True)
class Knee:
    objective: Objective
    rate: float                     # the highest rate that passed (0: none did)
    failed_at: float | None         # the lowest rate that failed (None: none did, up to the search's maximum)


class Search:
    """The measured trials by rate (a cache over searches) and the search itself."""

    def __init__(self, measure: Measure, repeats: int) -> None:
        self.measure = measure
        self.repeats = repeats
        self.trials: dict[float, list[Trial]] = {}

    async def trials_at(self, rate: float) -> list[Trial]:
        rate = round(rate, 4)
        if rate not in self.trials:
            self.trials[rate] = [await self.measure(rate, repeat) for repeat in range(self.repeats)]
        return self.trials[rate]

    async def passes(self, rate: float, objective: Objective) -> bool:
        return all(objective.met_by(trial) for trial in await self.trials_at(rate))

    async def find_knee(self, objective: Objective, *, start: float, max_rate: float, precision: float = 0.1,
                        below: float | None = None) -> Knee:
        """`below`: a rate known to fail (the p90 knee's failure bounds the p99 search); `precision`: the bracket
        is narrowed until failed / passed - 1 is under it."""
        passed, failed = 0.0, below
        rate = start if below is None or start < below else below / 2
        # Up from `start`, doubling, until a rate fails; or down, halving, until one passes.
        while True:
            if await self.passes(rate, objective):
                passed = rate
                if failed is not None:
                    break
                if rate >= max_rate:
                    return Knee(objective, passed, None)
                rate = min(max_rate, rate * 2)
            else:
                failed = rate
                if passed:
                    break
                rate /= 2
                if rate < start / 64:
                    return Knee(objective, 0.0, failed)
        # Then bisect.
        while failed / passed - 1 > precision:
            middle = (passed + failed) / 2
            if await self.passes(middle, objective):
                passed = middle
            else:
                failed = middle
        return Knee(objective, passed, failed)


async def capacity(measure: Measure, objective: Objective, *, repeats: int, start: float, max_rate: float,
                   precision: float, beyond: tuple[float, ...] = ()) -> tuple[list[Knee], dict[float, list[Trial]]]:
    """The p90 and p99 knees, then the rates `beyond` (multiples of the p90 knee) measured too."""
    search = Search(measure, repeats)
    knees = [await search.find_knee(objective.at(PERCENTILES[0]), start=start, max_rate=max_rate,
                                    precision=precision)]
    first = knees[0]
    for percentile in PERCENTILES[1:]:
        below = first.failed_at
        knees.append(await search.find_knee(objective.at(percentile), start=first.rate or start, max_rate=max_rate,
                                            precision=precision, below=below))
    if first.rate:
        for multiple in beyond:
            await search.trials_at(first.rate * multiple)
    return knees, dict(sorted(search.trials.items()))
