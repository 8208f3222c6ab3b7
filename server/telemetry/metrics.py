"""Prometheus metrics CodeFace adds to vLLM's own (vllm:* are re-exported as they are, from the same registry)."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

# Set (by engine.frontends, before it spawns them) when several API processes serve: each writes its values to
# files there and /metrics adds them up. Gauges then report the sum over the live processes.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SUM_OVER_PROCESSES: Final = "livesum"


def registry() -> CollectorRegistry:
    """What /metrics exposes: this process's metrics, or every API process's added up."""
    if os.environ.get(MULTIPROCESS_DIR):
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return combined
    return REGISTRY

# From 5 ms (a probe) to 10 minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

http_requests = Counter("codeface_http_requests", "HTTP requests by route template, method and status",
                        ["route", "method", "status"])
http_duration = Histogram("codeface_http_request_duration_seconds",
                          "HTTP request duration, to the last byte of the response", ["route", "method"],
                          buckets=LATENCY_BUCKETS)
http_in_flight = Gauge("codeface_http_requests_in_flight", "HTTP requests being served",
                       multiprocess_mode=SUM_OVER_PROCESSES)
# How late the event loop wakes a timer: the server's own responsiveness (every request waits this long extra).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
event_loop_lag = Histogram("codeface_event_loop_lag_seconds", "How late the event loop ran a timer (sampled "
                           "twice a second)", buckets=LOOP_LAG_BUCKETS)


class AbortReason(StrEnum):
    CLIENT_DISCONNECT = "client_disconnect"


aborted_requests = Counter("codeface_requests_aborted", "Generations aborted before their end, by reason",
                           ["model", "reason"])
rate_limit_rejections = Counter("codeface_rate_limit_rejections", "Requests refused by a rate limit",
                                ["model", "limit"])


class StorageFailure(StrEnum):
    """Why a call to the rate-limit storage did not count (a metric label)."""

    TIMEOUT = "timeout"
    ERROR = "error"
    BREAKER_OPEN = "breaker_open"  # not asked: it failed just before
    GIVE_BACK = "give_back"        # a give-back it did not take, retried in the background


# Each one left a request to the failure policy (fail open: served unlimited; fail closed: 503) or a slot held longer.
rate_limit_storage_failures = Counter("codeface_rate_limit_storage_failures", "Calls to the rate-limit storage that "
                                      "failed, timed out or were not made (its breaker open), by reason", ["reason"])
admission_rejections = Counter("codeface_admission_rejections", "Requests refused by global admission control",
                               ["model"])
sse_streams_active = Gauge("codeface_sse_streams_active", "Server-sent event streams open now", ["model"],
                           multiprocess_mode=SUM_OVER_PROCESSES)
# Per-tenant waits with a bounded label: the tenant's share class, how many generations it already had in flight
# when this one arrived (never a raw key or user id).
SHARE_CLASSES = ((0, "0"), (3, "1-3"), (15, "4-15"), (63, "16-63"))
tenant_queue_time = Histogram("codeface_tenant_queue_time_seconds", "Time a generation waited in the engine's "
                              "queue, by its tenant's share class", ["model", "share"], buckets=LATENCY_BUCKETS)
tenant_ttft = Histogram("codeface_tenant_time_to_first_token_seconds", "Time from admission to the first token, by "
                        "the tenant's share class", ["model", "share"], buckets=LATENCY_BUCKETS)

# Per served model (the base model's name, or a LoRA adapter's): vLLM's own counters carry the base model's name
# alone, whatever adapter a request used.
model_generations = Counter("codeface_model_generations", "Generations ended, by the model they named (base model "
                            "or LoRA adapter)", ["model"])
model_prompt_tokens = Counter("codeface_model_prompt_tokens", "Prompt tokens of ended generations, by model",
                              ["model"])
model_generation_tokens = Counter("codeface_model_generation_tokens", "Tokens generated, by model", ["model"])
model_ttft = Histogram("codeface_model_time_to_first_token_seconds", "Time from admission to the first token, by "
                       "model", ["model"], buckets=LATENCY_BUCKETS)

# SLO-aware admission (server.generation.slo): what it refused and why, and how its TTFT estimate compares with the
# TTFT then observed (observed / estimated: near 1 means the estimate can be trusted; above 1, it is optimistic).
slo_refusals = Counter("codeface_slo_refusals", "Generations refused by SLO-aware admission, by reason (ttft, tpot, "
                       "tenant_share) and the tenant's share class", ["model", "reason", "share"])
slo_ttft_estimate = Histogram("codeface_slo_ttft_estimate_seconds", "Estimated time to the first token of each "
                              "admitted generation (when the estimator had data)", ["model"], buckets=LATENCY_BUCKETS)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4, 10)
slo_ttft_ratio = Histogram("codeface_slo_ttft_observed_over_estimate", "Observed time to the first token divided by "
                           "the estimate made at admission", ["model"], buckets=RATIO_BUCKETS)


def tenant_share_class(in_flight: int) -> str:
    """The label for a tenant that already has `in_flight` generations: 0, 1-3, 4-15, 16-63 or 64+."""
    return next((label for bound, label in SHARE_CLASSES if in_flight <= bound), "64+")


sse_listeners = Gauge("codeface_sse_listeners", "Event-stream listeners open now (stream routes and reply streams)",
                      multiprocess_mode=SUM_OVER_PROCESSES)
sse_streams_resumed = Counter("codeface_sse_streams_resumed", "Streams re-attached with Last-Event-ID", ["model"])

db_operation = Histogram("codeface_db_operation_seconds", "Database statement latency", ["operation"],
                         buckets=DB_BUCKETS)
db_errors = Counter("codeface_db_errors", "Database statements that raised", ["operation"])
db_pool_checked_out = Gauge("codeface_db_pool_connections_in_use", "Pooled database connections checked out",
                            multiprocess_mode=SUM_OVER_PROCESSES)

