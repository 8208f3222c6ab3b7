"""The server's own Prometheus metrics around a load level: what its counters gained and where its gauges ended,
so that a report shows the server's view (refusals by reason, queue time, cache hits) beside the client's."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Families worth a report: the server's own and the engine's (vLLM names its metrics "vllm:...").
PREFIXES = ("codeface_", "vllm:")
CUMULATIVE_TYPES = ("counter", "histogram", "summary")
# Exporters that name a counter's TYPE without its suffix leave the parser guessing: the suffix decides then.
CUMULATIVE_SUFFIXES = ("_total", "_count", "_sum")
Samples = dict[str, float]


def parse(text: str, prefixes: tuple[str, ...] = PREFIXES) -> tuple[Samples, Samples]:
    """(counters, gauges) by sample name with its labels, e.g. 'codeface_refusals_total{reason="slo_ttft"}'.
    Histogram buckets are left out: their _count and _sum say enough for a report."""
    counters: Samples = {}
    gauges: Samples = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(prefixes):
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") or sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            cumulative = family.type in CUMULATIVE_TYPES or sample.name.endswith(CUMULATIVE_SUFFIXES)
            kind = counters if cumulative else gauges
            kind[key] = float(sample.value)
    return counters, gauges


async def scrape(http: httpx.AsyncClient, base_url: str) -> tuple[Samples, Samples] | None:
    """None when the server has no /metrics (vllm serve has one; a server behind a balancer may not)."""
    try:
        response = await http.get(base_url.rstrip("/") + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    return parse(response.text) if response.status_code == 200 else None


def gained(before: tuple[Samples, Samples] | None, after: tuple[Samples, Samples] | None) -> dict[str, float]:
    """Counters' gains over the level (those that moved) and gauges' values at its end."""
    if before is None or after is None:
        return {}
    counters_before, _ = before
    counters, gauges = after
    deltas = {name: value - counters_before.get(name, 0.0) for name, value in counters.items()}
    return {**{name: delta for name, delta in sorted(deltas.items()) if delta}, **dict(sorted(gauges.items()))}
