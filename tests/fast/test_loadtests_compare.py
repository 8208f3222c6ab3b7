"""The comparison's bookkeeping: same engine flags for vllm serve, ratios only claimed above the noise."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import EngineConfig
from engine.config import FAIR_SHARE_PREFILL_CHUNK
from loadtests.compare import _ratio
from loadtests.systems import profile_engine_config, vllm_serve_args
from loadtests.tenants import SYSTEMS as TENANT_SYSTEMS
from loadtests.tenants import same_engine_step

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_serve_gets_the_same_engine_arguments() -> None:
    config = EngineConfig(model="/m", served_model_name="smol", max_model_len=2048, enforce_eager=True,
                          max_num_seqs=64, enable_prefix_caching=False)
    args = vllm_serve_args(config)
    assert args[args.index("--model") + 1] == "/m"
    assert args[args.index("--served-model-name") + 1] == "smol"
    assert args[args.index("--max-model-len") + 1] == "2048"
    assert args[args.index("--max-num-seqs") + 1] == "64"
    assert "--enforce-eager" in args and "--no-enable-prefix-caching" in args
    assert "--disable-log-stats" not in args


def test_ratio_is_claimed_only_outside_the_noise() -> None:
    assert _ratio([100, 102, 101], [99, 103, 100], higher_is_better=True).endswith("(within noise)")
    assert _ratio([110, 112, 111], [99, 101, 100], higher_is_better=True) == "1.11x (better)"
    assert _ratio([110, 112, 111], [99, 101, 100], higher_is_better=False) == "1.11x (worse)"
    assert "no noise estimate" in _ratio([110], [100], higher_is_better=True)


def test_vllm_serve_gets_the_step_codeface_derives_with_fair_share(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """CodeFace runs here with auth on, so with the CPU profile's scheduling_policy: priority fair share bounds its
    step; vllm serve (and the raw engine) get the same step, and a noisy-neighbour run gives it to every system."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    profile = ROOT / "configs/cpu.yaml"
    overrides = {"model_path": "/m", "max_num_seqs": "8"}
    args = vllm_serve_args(profile_engine_config(profile, overrides))
    assert args[args.index("--max-num-batched-tokens") + 1] == str(8 + FAIR_SHARE_PREFILL_CHUNK)
    fcfs = vllm_serve_args(profile_engine_config(profile, {**overrides, "scheduling_policy": "fcfs"}))
    assert "--max-num-batched-tokens" not in fcfs

    systems = ["vllm", "codeface-fcfs", "codeface-fair"]
    per_system = same_engine_step(profile, overrides, systems)
    assert per_system["codeface-fair"] == overrides  # it derives the step itself, as it would in production
    for name in systems:
        config = profile_engine_config(profile, {**per_system[name], **TENANT_SYSTEMS[name]})
        assert config.engine_kwargs()["max_num_batched_tokens"] == 8 + FAIR_SHARE_PREFILL_CHUNK
    chosen = same_engine_step(profile, {**overrides, "max_num_batched_tokens": "512"}, systems)
    assert {system["max_num_batched_tokens"] for system in chosen.values()} == {"512"}
    assert same_engine_step(profile, overrides, ["vllm", "codeface-fcfs"]) == {"vllm": overrides,
                                                                               "codeface-fcfs": overrides}


def test_the_light_tenants_server_side_means_come_from_share_class_zero_over_the_phase() -> None:
    from loadtests.tenants import server_means

    ttft, queue = "codeface_tenant_time_to_first_token_seconds", "codeface_tenant_queue_time_seconds"
    light, heavy = '{model="m",share="0"}', '{model="m",share="16-63"}'
    before = ({f"{ttft}_sum{light}": 1.0, f"{ttft}_count{light}": 10.0, f"{ttft}_sum{heavy}": 50.0,
               f"{ttft}_count{heavy}": 5.0}, {})
    after = ({f"{ttft}_sum{light}": 2.5, f"{ttft}_count{light}": 20.0, f"{ttft}_sum{heavy}": 90.0,
              f"{ttft}_count{heavy}": 9.0, f"{queue}_sum{light}": 0.2, f"{queue}_count{light}": 10.0}, {})
    assert server_means(before, after) == pytest.approx({"server_ttft": 0.15, "engine_queue": 0.02})
    assert server_means(None, after) == {}
