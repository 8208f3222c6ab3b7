"""The one place that bridges vLLM versions: engine options this vLLM lacks are dropped, the rest pass through."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from engine import config as engine_config
from engine.config import (
    FAIR_SHARE_PREFILL_CHUNK,
    KV_CACHE_SPACE_VARIABLE,
    PRELOAD_VARIABLE,
    EngineConfig,
    EngineOptions,
    build_engine_args,
    engine_environment,
    fair_share_step_tokens,
    vllm_default_max_num_seqs,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _process_environment_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_engine_args sets variables in this process's environment for the engine core it would start: each is
    put back after the test, so that the rest of the session (browsers, servers, balancers) does not inherit it."""
    for name in (KV_CACHE_SPACE_VARIABLE, PRELOAD_VARIABLE):
        monkeypatch.delenv(name, raising=False)


def test_engine_args_carry_the_config() -> None:
    args = build_engine_args(EngineConfig(model="/models/m", served_model_name="m", max_model_len=1024,
                                          max_num_seqs=8, enforce_eager=True))
    assert (args.model, args.max_model_len, args.max_num_seqs, args.enforce_eager) == ("/models/m", 1024, 8, True)
    assert args.served_model_name == "m"


def test_options_unknown_to_this_vllm_are_dropped(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = EngineConfig(model="/models/m", served_model_name="m")
    original = EngineConfig.engine_kwargs

    def with_future_option(self: EngineConfig) -> dict[str, object]:
        return {**original(self), "option_from_a_future_vllm": True}

    monkeypatch.setattr(EngineConfig, "engine_kwargs", with_future_option)
    args = build_engine_args(config)
    assert not hasattr(args, "option_from_a_future_vllm")
    assert "option_from_a_future_vllm" in caplog.text
    assert {f.name for f in dataclasses.fields(args)} >= {"model", "max_model_len"}


def test_unset_optional_options_leave_vllm_defaults() -> None:
    kwargs = EngineConfig(model="/m", served_model_name="m").engine_kwargs()
    assert "gpu_memory_utilization" not in kwargs and "max_num_seqs" not in kwargs


def test_the_stream_interval_reaches_vllm_and_vllm_serve_alike() -> None:
    from loadtests.systems import vllm_serve_args

    config = EngineConfig(model="/models/m", served_model_name="m", stream_interval=4)
    assert build_engine_args(config).stream_interval == 4
    flags = vllm_serve_args(config)
    assert flags[flags.index("--stream-interval") + 1] == "4"
    assert "stream_interval" not in EngineConfig(model="/m", served_model_name="m").engine_kwargs()


def test_parallel_options_reach_vllm_as_they_are() -> None:
    args = build_engine_args(EngineConfig(model="/models/m", served_model_name="m", tensor_parallel_size=8,
                                          pipeline_parallel_size=2, data_parallel_size=4,
                                          distributed_executor_backend="ray"))
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size) == (8, 2, 4)
    assert args.distributed_executor_backend == "ray"


def test_the_profiles_kv_cache_space_wins_over_an_inherited_variable(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A server started by another inherits the parent's VLLM_CPU_KVCACHE_SPACE: its own profile's size applies,
    and the warning says so."""
    monkeypatch.setenv(KV_CACHE_SPACE_VARIABLE, "2")
    config = EngineConfig(model="/models/m", served_model_name="m", kv_cache_space_gib=1)
    assert engine_environment(config)[KV_CACHE_SPACE_VARIABLE] == "1"
    build_engine_args(config)
    assert os.environ[KV_CACHE_SPACE_VARIABLE] == "1"
    assert "overridden by kv_cache_space_gib=1" in caplog.text


def test_the_engine_process_preloads_tcmalloc_where_installed(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """vLLM's CPU guide asks for tcmalloc in LD_PRELOAD; the engine core and vllm serve in comparisons get it
    first, after nothing another preload already chose, and never twice."""
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.touch()
    monkeypatch.setattr(engine_config, "TCMALLOC_PATTERNS", (str(library),))
    monkeypatch.setattr(engine_config, "is_cpu_build", lambda: True)
    config = EngineConfig(model="/models/m", served_model_name="m")

    monkeypatch.setenv(PRELOAD_VARIABLE, "/torch/lib/libgomp.so.1")
    assert engine_environment(config)[PRELOAD_VARIABLE] == f"{library}:/torch/lib/libgomp.so.1"
    build_engine_args(config)
    assert os.environ[PRELOAD_VARIABLE] == f"{library}:/torch/lib/libgomp.so.1"
    build_engine_args(config)
    assert os.environ[PRELOAD_VARIABLE].count("tcmalloc") == 1

    monkeypatch.setenv(PRELOAD_VARIABLE, "/usr/lib/libjemalloc.so.2")
    assert engine_environment(config)[PRELOAD_VARIABLE] == "/usr/lib/libjemalloc.so.2"
    monkeypatch.delenv(PRELOAD_VARIABLE)
    system = EngineConfig(model="/models/m", served_model_name="m", cpu_allocator="system")
    assert PRELOAD_VARIABLE not in engine_environment(system)
    monkeypatch.setattr(engine_config, "TCMALLOC_PATTERNS", (str(tmp_path / "absent.so"),))
    assert PRELOAD_VARIABLE not in engine_environment(config)
    assert "cpu_allocator" not in config.engine_kwargs()


def test_fair_share_bounds_the_step_where_the_profile_does_not() -> None:
    """With fair share on and max_num_batched_tokens unset, one step holds a decode token per slot and one prefill
    chunk (loadtests/RESULTS.md: the light tenant's p99 TTFT within 2x of its floor only with the step bounded)."""
    config = EngineConfig(model="/m", served_model_name="m", max_num_seqs=8, fair_share=True)
    assert config.engine_kwargs()["max_num_batched_tokens"] == 8 + FAIR_SHARE_PREFILL_CHUNK
    assert "fair_share" not in config.engine_kwargs()


def test_a_profiles_own_step_wins_and_without_fair_share_vllm_chooses() -> None:
    explicit = EngineConfig(model="/m", served_model_name="m", max_num_seqs=8, max_num_batched_tokens=4096,
                            fair_share=True)
    assert explicit.engine_kwargs()["max_num_batched_tokens"] == 4096
    assert explicit.derived_step_tokens is None
    unfair = EngineConfig(model="/m", served_model_name="m", max_num_seqs=8)
    assert "max_num_batched_tokens" not in unfair.engine_kwargs()


def test_the_derived_step_meets_vllms_own_checks() -> None:
    """vLLM requires max_num_batched_tokens >= max_num_seqs, and with chunked prefill off >= max_model_len (so then
    nothing is derived); a tiny context caps it at max_num_seqs x max_model_len, as vLLM caps its own default."""
    from vllm.config import SchedulerConfig

    for slots, context in ((1, 2048), (8, 2048), (256, 2048), (1024, 4096), (4, 16)):
        step = fair_share_step_tokens(EngineOptions(max_num_seqs=slots, max_model_len=context))
        assert step is not None and slots <= step <= slots * context
        SchedulerConfig(max_num_batched_tokens=step, max_num_seqs=slots, max_model_len=context,
                        is_encoder_decoder=False, enable_chunked_prefill=True)
    assert fair_share_step_tokens(EngineOptions(max_num_seqs=4, max_model_len=16)) == 64
    assert fair_share_step_tokens(EngineOptions(max_num_seqs=8, enable_chunked_prefill=False)) is None


def test_unset_slots_take_vllms_largest_default_so_none_are_lost() -> None:
    """vLLM lowers an unset max_num_seqs to max_num_batched_tokens: the budget is derived from the largest default
    this platform's vLLM gives any entry point (vllm serve's and the in-process engine's differ)."""
    from vllm.config import SchedulerConfig
    from vllm.engine.arg_utils import EngineArgs

    slots = vllm_default_max_num_seqs(EngineOptions())
    assert slots >= max([SchedulerConfig.DEFAULT_MAX_NUM_SEQS, *EngineArgs.get_batch_defaults(1)[1].values()])
    config = EngineConfig(model="/m", served_model_name="m", fair_share=True)
    assert config.engine_kwargs()["max_num_batched_tokens"] == slots + FAIR_SHARE_PREFILL_CHUNK
    assert "max_num_seqs" not in config.engine_kwargs()


def test_the_derived_step_reaches_vllm_and_is_logged_by_the_engine_starter(caplog: pytest.LogCaptureFixture) -> None:
    config = EngineConfig(model="/m", served_model_name="m", max_num_seqs=8, fair_share=True)
    with caplog.at_level(logging.INFO, logger="engine.config"):
        assert build_engine_args(config, starts_engine=False).max_num_batched_tokens == 8 + FAIR_SHARE_PREFILL_CHUNK
        assert "max_num_batched_tokens=" not in caplog.text  # an API process of several: the launcher said it
        build_engine_args(config)
    assert caplog.text.count(f"max_num_batched_tokens={8 + FAIR_SHARE_PREFILL_CHUNK}") == 1


@pytest.mark.parametrize(("auth", "policy", "fairness", "bounded"), [
    ("true", "priority", "auto", True), ("false", "priority", "auto", False), ("true", "fcfs", "auto", False),
    ("false", "priority", "on", True), ("true", "priority", "off", False)])
def test_the_server_bounds_the_step_exactly_where_fair_share_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   auth: str, policy: str, fairness: str,
                                                                   bounded: bool) -> None:
    from server.settings import load_settings

    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    settings = load_settings(ROOT / "configs/cpu.yaml", auth_enabled=auth, scheduling_policy=policy,
                             fairness=fairness, max_num_seqs="8")
    config = settings.engine_config("/m")
    assert config.fair_share is settings.fairness_enabled is bounded
    assert config.engine_kwargs().get("max_num_batched_tokens") == (8 + FAIR_SHARE_PREFILL_CHUNK if bounded else None)
