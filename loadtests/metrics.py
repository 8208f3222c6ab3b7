"""Per-request measurements and their summary, with the definitions `vllm bench serve` uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFUSAL_STATUSES = frozenset({429, 503, 529})


@dataclass(slots=True)
class RequestResult:
    ok: bool
    latency: float = 0.0                 # seconds, request sent -> last byte
    ttft: float = 0.0                    # seconds, request sent -> first content token
    itl: list[float] = field(default_factory=list)  # gaps between content-bearing chunks
    prompt_tokens: int = 0               # from the server's usage
    output_tokens: int = 0               # from the server's usage when given, else counted chunks
    error: str = ""
    text: str = ""                       # the reply, for multi-turn workloads that send it back
    turn: int = 0                        # position in its conversation (multi-turn workloads)
    status: int = 0                      # the HTTP status when the server answered with an error
    cancelled: bool = False              # the client stopped reading on purpose (a workload's cancel share)

    @property
    def refused(self) -> bool:
        """The server said no at once: 429 or 503 (Anthropic's 529 too), the answers of admission and limits."""
        return self.status in REFUSAL_STATUSES

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, as vllm bench serve defines it."""
        if self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


PERCENTILES = (50, 90, 95, 99)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    array = np.asarray(values) * 1000.0  # milliseconds, as vllm bench serve reports them
    return {"mean": float(array.mean()), **{f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}}


@dataclass(slots=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2el_ms: dict[str, float]
    mean_output_tokens: float
    errors: dict[str, int]
    goodput: float | None = None         # requests/s that met every SLO, when SLOs are given
    refused: int = 0                     # of `failed`: answered 429/503 at once (admission, limits)
    refusal_ms: dict[str, float] = field(default_factory=dict)  # how fast those answers came
    cancelled: int = 0                   # stopped by the client on purpose: neither completed nor failed


@dataclass(frozen=True, slots=True)
class SLO:
    """Service-level objectives in milliseconds; a request counts towards goodput only if it meets all given."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, r: RequestResult) -> bool:
        tpot = r.tpot or 0.0
        return ((self.ttft_ms is None or r.ttft * 1000 <= self.ttft_ms)
                and (self.tpot_ms is None or tpot * 1000 <= self.tpot_ms)
                and (self.e2el_ms is None or r.latency * 1000 <= self.e2el_ms))

    @classmethod
    def parse(cls, specs: list[str]) -> SLO | None:
        """From command-line items such as "ttft:500" "tpot:50" (milliseconds)."""
        if not specs:
            return None
        values = {}
        for spec in specs:
            name, _, number = spec.partition(":")
            if name not in ("ttft", "tpot", "e2el") or not number:
                raise ValueError(f"bad SLO {spec!r}: use ttft:MS, tpot:MS or e2el:MS")
            values[f"{name}_ms"] = float(number)
        return cls(**values)


def summarize(results: list[RequestResult], duration_s: float, slo: SLO | None = None) -> Summary:
    ok = [r for r in results if r.ok]
    cancelled = [r for r in results if r.cancelled]
    refused = [r for r in results if r.refused]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok and not r.cancelled:
            errors[r.error] = errors.get(r.error, 0) + 1
    return Summary(
        completed=len(ok),
        failed=len(results) - len(ok) - len(cancelled),
        duration_s=duration_s,
        request_throughput=len(ok) / duration_s if duration_s else 0.0,
        output_throughput=output_tokens / duration_s if duration_s else 0.0,
        total_token_throughput=(output_tokens + prompt_tokens) / duration_s if duration_s else 0.0,
        ttft_ms=_stats([r.ttft for r in ok]),
        tpot_ms=_stats([t for r in ok if (t := r.tpot) is not None]),
        itl_ms=_stats([gap for r in ok for gap in r.itl]),
        e2el_ms=_stats([r.latency for r in ok]),
        mean_output_tokens=output_tokens / len(ok) if ok else 0.0,
        errors=errors,
        goodput=(sum(1 for r in ok if slo.met_by(r)) / duration_s if duration_s else 0.0) if slo else None,
        refused=len(refused),
        refusal_ms=_stats([r.latency for r in refused]) if refused else {},
        cancelled=len(cancelled),
    )
