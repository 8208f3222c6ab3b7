"""Engine configuration, and its translation to vLLM's AsyncEngineArgs (the one place that knows vLLM versions differ)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str
    served_model_name: str
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    # GPU: fraction of device memory. CPU backend: fraction of host RAM; kv_cache_space_gib is clearer there.
    gpu_memory_utilization: float | None = None
    kv_cache_space_gib: int | None = None
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None
    load_format: str = "auto"
    seed: int = 0

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "served_model_name": self.served_model_name,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "enforce_eager": self.enforce_eager,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "load_format": self.load_format,
            "seed": self.seed,
            # Our own stat logger keeps the latest scheduler stats; vLLM's periodic log lines are noise here.
            "disable_log_stats": True,
        }
        optional = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_chunked_prefill": self.enable_chunked_prefill,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        return kwargs


def build_engine_args(config: EngineConfig) -> Any:
    """AsyncEngineArgs for the installed vLLM, dropping (with a warning) any option this version lacks."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    kwargs = config.engine_kwargs()
    for name in sorted(set(kwargs) - known):
        logger.warning("this vLLM has no engine option %r; ignoring it", name)
        kwargs.pop(name)
    if config.kv_cache_space_gib is not None:
        # The CPU backend sizes its KV cache from this variable; the engine core process inherits it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_space_gib))
    return AsyncEngineArgs(**kwargs)
