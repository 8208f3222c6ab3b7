"""The load generator's figures on a synthetic trace, checked against vllm bench serve's definitions."""

from __future__ import annotations

import pytest

from loadtests.metrics import RequestResult, summarize


def test_summary_on_a_synthetic_trace() -> None:
    # Two requests: 5 output tokens each, first token at 100 / 300 ms, then one token every 20 / 40 ms.
    a = RequestResult(ok=True, ttft=0.100, itl=[0.02] * 4, latency=0.180, prompt_tokens=10, output_tokens=5)
    b = RequestResult(ok=True, ttft=0.300, itl=[0.04] * 4, latency=0.460, prompt_tokens=10, output_tokens=5)
    failed = RequestResult(ok=False, error="http 503")
    summary = summarize([a, b, failed], duration_s=2.0)

    assert (summary.completed, summary.failed, summary.errors) == (2, 1, {"http 503": 1})
    assert summary.output_throughput == pytest.approx(10 / 2.0)
    assert summary.total_token_throughput == pytest.approx(30 / 2.0)
    assert summary.request_throughput == pytest.approx(1.0)
    assert summary.ttft_ms["mean"] == pytest.approx(200.0)
    assert summary.ttft_ms["p50"] == pytest.approx(200.0)
    # TPOT = (latency - ttft) / (output_tokens - 1): 20 ms and 40 ms.
    assert summary.tpot_ms["mean"] == pytest.approx(30.0)
    # ITL pools every gap of every request.
    assert summary.itl_ms["p50"] == pytest.approx(30.0)
    assert summary.itl_ms["p99"] == pytest.approx(40.0)
    assert summary.e2el_ms["mean"] == pytest.approx(320.0)
    assert summary.mean_output_tokens == 5


def test_single_token_requests_have_no_tpot() -> None:
    one = RequestResult(ok=True, ttft=0.1, latency=0.1, output_tokens=1)
    assert one.tpot is None
    assert summarize([one], 1.0).tpot_ms["mean"] == 0.0


def test_goodput_counts_requests_meeting_every_slo() -> None:
    from loadtests.metrics import SLO

    fast = RequestResult(ok=True, ttft=0.1, latency=0.5, output_tokens=11)    # TPOT 40 ms
    slow_start = RequestResult(ok=True, ttft=0.9, latency=1.3, output_tokens=11)
    slow_tokens = RequestResult(ok=True, ttft=0.1, latency=1.1, output_tokens=11)  # TPOT 100 ms
    slo = SLO.parse(["ttft:500", "tpot:50"])
    assert slo == SLO(ttft_ms=500, tpot_ms=50)
    assert summarize([fast, slow_start, slow_tokens], duration_s=2.0, slo=slo).goodput == pytest.approx(0.5)
    assert summarize([fast], duration_s=1.0).goodput is None
    with pytest.raises(ValueError):
        SLO.parse(["latency:3"])


def test_arrival_gaps_have_the_asked_rate_and_burstiness() -> None:
    import statistics

    from loadtests.runner import arrival_gaps

    poisson = arrival_gaps(20_000, rate=4.0, burstiness=1.0, seed=1)
    bursty = arrival_gaps(20_000, rate=4.0, burstiness=0.25, seed=1)
    assert statistics.mean(poisson) == pytest.approx(0.25, rel=0.03)
    assert statistics.mean(bursty) == pytest.approx(0.25, rel=0.05)
    # Same mean, more spread: gamma with shape k has coefficient of variation 1/sqrt(k).
    assert statistics.stdev(poisson) / statistics.mean(poisson) == pytest.approx(1.0, rel=0.05)
    assert statistics.stdev(bursty) / statistics.mean(bursty) == pytest.approx(2.0, rel=0.1)


def test_the_listeners_report_gives_cpu_per_10_s_and_per_minute_and_the_ratios() -> None:
    from loadtests.listeners import Repeat, Window, report

    chat_without = {"output_tok_s": 150.0, "ttft_median_ms": 3000.0, "failed": 0}
    chat_with = {"output_tok_s": 147.0, "ttft_median_ms": 3090.0, "failed": 0}
    repeat = Repeat(idle=Window(cpu_s_per_10s=0.03, engine_cpu_s_per_10s=0.1, rss_mib=765.0),
                    listening=Window(cpu_s_per_10s=0.065, engine_cpu_s_per_10s=0.1, rss_mib=1062.0),
                    listeners_alive=10_000, heartbeats_received=3000, chat_with=chat_with, chat_without=chat_without)
    text = report([repeat], 10_000, {"command": "listeners"})
    assert "| ... with 10000 idle listeners, above idle | 0.035 - 0.035 (0.21 - 0.21) |" in text
    assert "| RSS growth per listener, KiB (first repeat) | 30.4 |" in text
    assert "| tok/s ratio with/without (per repeat) | 0.98 - 0.98 |" in text
    assert "| TTFT ratio with/without (per repeat) | 1.03 - 1.03 |" in text
