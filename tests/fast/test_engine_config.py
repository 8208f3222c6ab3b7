"""The one place that bridges vLLM versions: engine options this vLLM lacks are dropped, the rest pass through."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from engine import config as engine_config
from engine.config import KV_CACHE_SPACE_VARIABLE, PRELOAD_VARIABLE, EngineConfig, build_engine_args, engine_environment


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
