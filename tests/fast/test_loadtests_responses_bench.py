"""The pure parts of loadtests/responses_bench.py: percentiles, RSS parsing, ratios and vLLM bench arguments."""

from __future__ import annotations

import argparse

import pytest

from engine import EngineConfig
from engine.config import EngineOptions
from loadtests.responses_bench import (
    Backend,
    BenchLoad,
    bench_argv,
    percentile,
    ratios,
    spread,
    vm_rss_kib,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([7.0], 99) == 7.0


def test_vm_rss_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
    assert vm_rss_kib(status) == 123456
    with pytest.raises(ValueError):
        vm_rss_kib("Name:\tpython\n")


def test_ratios_pair_repeats_and_spread_is_median_min_max() -> None:
    assert ratios([99.0, 101.0], [100.0, 100.0]) == "0.99-1.01x"
    assert spread([3.0, 1.0, 2.0]) == "2.0 [1.0-3.0]"
    with pytest.raises(ValueError):
        ratios([1.0], [1.0, 2.0])


def test_bench_arguments_parse_with_vllms_own_parser() -> None:
    from vllm.benchmarks.serve import add_cli_args

    config = EngineConfig.for_model(EngineOptions(), "/models/SmolLM2-135M-Instruct")
    argv = bench_argv(Backend.RESPONSES, "http://127.0.0.1:9", config, BenchLoad(24, 128, 64), concurrency=4,
                      seed=7, api_key="sk-x")
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv)
    assert (args.backend, args.endpoint, args.max_concurrency, args.seed) == ("openai-responses", "/v1/responses",
                                                                               4, 7)
    assert args.model == "SmolLM2-135M-Instruct" and args.tokenizer == "/models/SmolLM2-135M-Instruct"
    assert args.ignore_eos and args.header == ["Authorization=Bearer sk-x"]
    chat = parser.parse_args(bench_argv(Backend.CHAT, "http://h", config, BenchLoad(8, 16, 8), concurrency=1,
                                        seed=1, api_key=None))
    assert chat.endpoint == "/v1/chat/completions" and chat.header is None
