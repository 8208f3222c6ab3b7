"""Keeps the latest scheduler statistics the engine core reports, and passes each step's decode time on, through
vLLM's stat-logger hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.types import EngineStats

# Called once per engine step that decoded: (sequences of this frontend that got a token after their first, their
# mean time since their previous token in seconds, whether the step also ended some sequence's prefill).
DecodeObserver = Callable[[int, float, bool], None]


class SchedulerStatsRecorder:
    """Holds the most recent SchedulerStats; `factory` is what AsyncLLM's stat_loggers list takes."""

    def __init__(self) -> None:
        self._latest: Any = None
        self._prefix_queries = 0
        self._prefix_hits = 0
        self.decode_observer: DecodeObserver | None = None

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        recorder = self

        # vLLM is Any to mypy (follow_imports=skip), hence the ignore.
        class _Logger(StatLoggerBase):  # type: ignore[misc]
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            # vLLM calls this with keywords: the names are its.
            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:  # noqa: ARG002
                if scheduler_stats is not None:
                    recorder.observe(scheduler_stats)
                if iteration_stats is not None:
                    recorder.decode_step(iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger(vllm_config, engine_index)

    def observe(self, scheduler_stats: Any) -> None:
        self._latest = scheduler_stats
        prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
        if prefix is not None:
            self._prefix_queries += getattr(prefix, "queries", 0)
            self._prefix_hits += getattr(prefix, "hits", 0)

    def decode_step(self, iteration_stats: Any) -> None:
        """The step's time per output token as the running streams saw it, at once: what a sequence reports only when
        it finishes comes a whole reply late, and under a flood that is a minute of admitting too much."""
        latencies = getattr(iteration_stats, "inter_token_latencies_iter", None)
        if latencies and self.decode_observer is not None:
            prefilled = bool(getattr(iteration_stats, "time_to_first_tokens_iter", None))
            self.decode_observer(len(latencies), sum(latencies) / len(latencies), prefilled)

    def snapshot(self, requests_in_flight: int) -> EngineStats:
        latest = self._latest
        if latest is None:
            return EngineStats(requests_in_flight=requests_in_flight)
        hit_rate = self._prefix_hits / self._prefix_queries if self._prefix_queries else None
        return EngineStats(
            requests_in_flight=requests_in_flight,
            running=latest.num_running_reqs,
            waiting=latest.num_waiting_reqs,
            kv_cache_usage=latest.kv_cache_usage,
            prefix_cache_hit_rate=hit_rate,
        )
