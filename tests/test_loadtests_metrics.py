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


def test_cli_short_run_against_the_real_server(server_url: str, admin_key: str, tmp_path) -> None:
    import json
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "loadtests", "run", "--base-url", server_url, "--concurrency", "1,2",
         "--num-prompts", "2", "--input-len", "32", "--output-len", "8", "--warmup", "1", "--api-key", admin_key,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "out tok/s" in completed.stdout
    levels = json.loads((tmp_path / "results.json").read_text())["levels"]
    assert sorted(levels) == ["1", "2"]
    assert {"report.md", "throughput.png", "latency.png", "ttft_cdf.png"} <= {p.name for p in tmp_path.iterdir()}
    for row in levels.values():
        assert row["completed"] == 2 and row["failed"] == 0
        assert row["mean_output_tokens"] == 8  # ignore_eos makes every reply exactly output-len tokens
        assert row["ttft_ms"]["p50"] > 0 and row["output_throughput"] > 0


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


def test_workloads_have_the_asked_shapes() -> None:
    from loadtests.workload import DEFAULT_TOKENIZER, PromptMaker, build_jobs, sample_lengths

    fixed = build_jobs("fixed", 3, input_len=40, output_len=7)
    maker = PromptMaker(DEFAULT_TOKENIZER)
    assert all(len(maker.tokenizer.encode(job.turns[0], add_special_tokens=False)) == 40 for job in fixed)
    assert all(job.output_lens == [7] for job in fixed)
    assert len({job.turns[0] for job in fixed}) == 3
    turns = build_jobs("multiturn", 2, input_len=10, output_len=5, turns=3)
    assert all(len(job.turns) == 3 and job.output_lens == [5, 5, 5] for job in turns)
    lengths = sample_lengths(500, seed=0)
    assert all(4 <= i < 1024 and 4 <= o < 512 for i, o in lengths)
    assert 80 < sorted(i for i, _ in lengths)[250] < 300  # the shipped histogram's median is about 150


def test_cli_completions_workload(server_url: str, admin_key: str, tmp_path) -> None:
    import json
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "loadtests", "run", "--api", "completions", "--base-url", server_url,
         "--concurrency", "2", "--num-prompts", "2", "--input-len", "32", "--output-len", "8", "--warmup", "1",
         "--api-key", admin_key, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    level = json.loads((tmp_path / "results.json").read_text())["levels"]["2"]
    assert level["completed"] == 2 and level["failed"] == 0 and level["mean_output_tokens"] == 8


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
