"""The load tool against the real server (`python -m loadtests run`, chat and completions) and its workloads, whose
prompts are measured with the model's own tokenizer (the engine-free figures: tests/fast/test_loadtests_metrics.py)."""

from __future__ import annotations


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


def test_shared_prefix_cancellations_ramp_up_and_the_servers_own_metrics(server_url: str, admin_key: str,
                                                                         tmp_path) -> None:
    """The load-test features performance engineers ask for, in one short run against the real server: users
    behind one long system prompt, a share who leave mid-stream, users arriving over a ramp, and the server's
    /metrics read around the level."""
    import json
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "loadtests", "run", "--base-url", server_url, "--concurrency", "4",
         "--num-prompts", "8", "--workload", "shared-prefix", "--prefix-len", "200", "--input-len", "16",
         "--output-len", "24", "--cancel-share", "0.25", "--cancel-after", "4", "--ramp-up", "1",
         "--scrape-metrics", "--warmup", "1", "--api-key", admin_key, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    level = results["levels"]["4"]
    # Two of eight users left after 4 chunks: neither completed nor failed; the others got whole replies.
    assert (level["completed"], level["cancelled"], level["failed"], level["refused"]) == (6, 2, 0, 0)
    assert level["mean_output_tokens"] == 24
    server = results["server_metrics"]["4"]
    # The shared prompt was read from the prefix cache after the first user (vLLM counts the hits).
    hits = sum(value for name, value in server.items() if name.startswith("vllm:prefix_cache_hits"))
    assert hits >= 200 * 4, server
    assert "## Server metrics, level 4" in (tmp_path / "report.md").read_text()
