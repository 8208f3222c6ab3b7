"""The comparison's bookkeeping: same engine flags for vllm serve, ratios only claimed above the noise."""

from __future__ import annotations

from engine import EngineConfig
from loadtests.compare import _ratio
from loadtests.systems import vllm_serve_args


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
