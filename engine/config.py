"""Engine options, declared once (the server's settings and the load tests reuse them), and their translation to
vLLM's AsyncEngineArgs: the one place that knows vLLM versions differ."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

KV_CACHE_SPACE_VARIABLE = "VLLM_CPU_KVCACHE_SPACE"
PRELOAD_VARIABLE = "LD_PRELOAD"
# Where Debian's libtcmalloc-minimal4 (and its kin on other distributions) puts the allocator vLLM's CPU guide asks
# for; vLLM preloads it itself only when its wheel bundles a copy, and the CPU wheel on PyPI does not.
TCMALLOC_PATTERNS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
                     "/usr/lib/libtcmalloc_minimal.so.4")

# Sampling defaults a profile may set: they override the model's generation_config, as vllm serve's
# --override-generation-config does; a request's own values override both.
SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "max_tokens")
# Options that are CodeFace's own (or vllm serve's frontend flags), not AsyncEngineArgs fields.
NOT_ENGINE_ARGS = frozenset({"kv_cache_space_gib", "cpu_allocator", "tool_call_parser", "enable_auto_tool_choice",
                             "chat_template", *SAMPLING_DEFAULTS})
# With fair share on, the tokens one engine step may prefill beyond one decode token per sequence slot, where the
# profile leaves max_num_batched_tokens unset. A request cannot join a step already running, so vLLM's default
# (2,048 on the CPU build) lets a wave of one tenant's prefills hold another's next request for a whole long step:
# bounded this way the light tenant's p99 TTFT under a flood stayed within 1.4-1.6x of its floor, against 1.6-5.7x
# (loadtests/RESULTS.md, "The same scenario with the engine's step bounded": 256 tokens at 16 slots).
FAIR_SHARE_PREFILL_CHUNK = 256
# vLLM's largest default max_num_seqs (large GPUs), for a vLLM that cannot say its own: a budget derived from it
# never makes vLLM lower the slots it would have given an unset max_num_seqs.
FALLBACK_DEFAULT_MAX_NUM_SEQS = 1024


class EngineOptions(BaseModel):
    """The vLLM engine options a profile may set. Each maps to the AsyncEngineArgs field of the same name (None
    leaves vLLM's default), except `kv_cache_space_gib`. Adding an option is one line here."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # auto: on the CPU build, bfloat16 where the processor computes it natively (AMX or AVX512-BF16), float32
    # elsewhere (AVX2 emulates bfloat16, about 5x slower); on a GPU, vLLM's own choice.
    dtype: str = "auto"
    max_model_len: int = 2048
    # GPU: fraction of device memory. CPU backend: fraction of host RAM; kv_cache_space_gib is clearer there.
    gpu_memory_utilization: float | None = None
    kv_cache_space_gib: int | None = None
    # CPU backend: the engine process's memory allocator. tcmalloc (preloaded where installed) as vLLM's CPU guide
    # asks; "system" keeps glibc's malloc. Comparisons give vllm serve the same (engine_environment).
    cpu_allocator: Literal["tcmalloc", "system"] = "tcmalloc"
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    # Engines bigger than one device or machine (vLLM's own executors; ray needs a running Ray cluster).
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    enable_prefix_caching: bool = True
    # Tokens per streamed event (vllm serve's --stream-interval; None: vLLM's 1, every token at once): a larger value
    # cuts the frontend's CPU per token (one write and one wake-up per event) for coarser chunks; the first token
    # always goes at once. A request's own `stream_interval` may only raise it.
    stream_interval: int | None = None
    enable_chunked_prefill: bool | None = None
    load_format: str = "auto"
    seed: int = 0
    # fcfs (vllm serve's default) or priority: lower values first, arrival order within a value.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    # LoRA adapters over the base model (vllm serve's flags of the same names): adapters in one batch at most,
    # the largest rank an adapter may have, adapters kept in host memory (None: max_loras). docs/adapters.md.
    enable_lora: bool = False
    max_loras: int | None = None
    max_lora_rank: int | None = None
    max_cpu_loras: int | None = None

    # Chat features, as vllm serve's flags of the same names: a registered tool parser (hermes, llama3_json, ...)
    # and whether tool_choice "auto" uses it; a registered reasoning parser; a chat template file that replaces
    # the model's own (for tools, say).
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None
    chat_template: Path | None = None

    # Sampling defaults (unset: the model's generation_config.json, then OpenAI's).
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None

    def engine_kwargs_without_model(self) -> dict[str, Any]:
        values = self.model_dump(include=set(EngineOptions.model_fields) - NOT_ENGINE_ARGS)
        values["dtype"] = resolve_dtype(self.dtype)
        return {name: value for name, value in values.items() if value is not None}

    def sampling_defaults(self) -> dict[str, Any]:
        """The profile's sampling defaults, named as vLLM's generation_config overrides name them."""
        return {name: value for name in SAMPLING_DEFAULTS if (value := getattr(self, name)) is not None}


class EngineConfig(EngineOptions):
    """The options plus the model folder they apply to, and whether the server runs fair share over the engine."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str
    served_model_name: str
    # The server orders the engine's queue by tenant (server settings: fairness on): the step is bounded unless
    # the profile sets max_num_batched_tokens (fair_share_step_tokens).
    fair_share: bool = False

    @classmethod
    def for_model(cls, options: EngineOptions, model: str, served_model_name: str | None = None, *,
                  fair_share: bool = False) -> EngineConfig:
        """`served_model_name` defaults to the model folder's name."""
        name = served_model_name or model.rstrip("/").rsplit("/", 1)[-1]
        return cls(model=model, served_model_name=name, fair_share=fair_share,
                   **options.model_dump(include=set(EngineOptions.model_fields)))

    @property
    def derived_step_tokens(self) -> int | None:
        """The max_num_batched_tokens CodeFace chooses for this engine, or None: the profile's own value, or vLLM's."""
        return fair_share_step_tokens(self) if self.fair_share else None

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "model": self.model,
            "served_model_name": self.served_model_name,
            **self.engine_kwargs_without_model(),
            # Our own stat logger keeps the latest scheduler stats; vLLM's periodic log lines are noise here.
            "disable_log_stats": True,
        }
        if (step := self.derived_step_tokens) is not None:
            kwargs["max_num_batched_tokens"] = step
        return kwargs


def fair_share_step_tokens(options: EngineOptions) -> int | None:
    """max_num_batched_tokens for an engine under fair share whose profile leaves it unset: the sequence slots (the
    profile's max_num_seqs, else vLLM's default) plus FAIR_SHARE_PREFILL_CHUNK, so that every running sequence
    decodes and one chunk of prefill fits in each step (vLLM requires at least max_num_seqs), and never more than
    max_num_seqs x max_model_len (vLLM's own cap on its default). None where the profile sets it, or turns chunked
    prefill off (then every prompt must fit in one step, and vLLM requires at least max_model_len)."""
    if options.max_num_batched_tokens is not None or options.enable_chunked_prefill is False:
        return None
    slots = options.max_num_seqs or vllm_default_max_num_seqs(options)
    return min(slots + FAIR_SHARE_PREFILL_CHUNK, slots * options.max_model_len)


def vllm_default_max_num_seqs(options: EngineOptions) -> int:
    """The largest max_num_seqs vLLM gives this platform when a profile leaves it unset (it differs by usage
    context: vllm serve's and the in-process engine's), so that a budget derived from it never lowers the slots
    (vLLM caps an unset max_num_seqs at max_num_batched_tokens)."""
    from vllm.config import SchedulerConfig
    from vllm.engine.arg_utils import EngineArgs

    defaults = getattr(EngineArgs, "get_batch_defaults", None)
    if defaults is None:
        return FALLBACK_DEFAULT_MAX_NUM_SEQS
    _, seqs = defaults(options.pipeline_parallel_size * options.tensor_parallel_size)
    return int(max([SchedulerConfig.DEFAULT_MAX_NUM_SEQS, *seqs.values()]))


AUTO = "auto"
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_INFO = Path("/proc/cpuinfo")


def is_cpu_build() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def cpu_dtype() -> str:
    flags = CPU_INFO.read_text() if CPU_INFO.exists() else ""
    return "bfloat16" if any(flag in flags for flag in NATIVE_BF16_FLAGS) else "float32"


def resolve_dtype(dtype: str) -> str:
    """`auto` made concrete where CodeFace knows better than vLLM's default (the CPU build); else as given."""
    return cpu_dtype() if dtype == AUTO and is_cpu_build() else dtype


def build_engine_args(config: EngineConfig, *, starts_engine: bool = True) -> Any:
    """AsyncEngineArgs for the installed vLLM, dropping (with a warning) any option this version lacks.
    `starts_engine`: this process starts the engine core (an API process of several only connects to it), so it
    logs the choices CodeFace made for it."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    kwargs = config.engine_kwargs()
    if starts_engine and (step := config.derived_step_tokens) is not None:
        logger.info("max_num_batched_tokens=%d (the sequence slots and %d tokens of prefill): fair share is on and the "
                    "profile does not set it, so a tenant's next request waits for no long step of another's "
                    "prefills; set MAX_NUM_BATCHED_TOKENS to choose", step, FAIR_SHARE_PREFILL_CHUNK)
    for name in sorted(set(kwargs) - known):
        logger.warning("this vLLM has no engine option %r; ignoring it", name)
        kwargs.pop(name)
    # The CPU backend sizes its KV cache from this variable; the engine core process inherits it (and the allocator
    # preload: it applies to processes started from here on, the engine core among them).
    _set_kv_cache_space(config, os.environ)
    _preload_allocator(config, os.environ)
    return AsyncEngineArgs(**kwargs)


def engine_environment(config: EngineConfig) -> dict[str, str]:
    """The environment a separate engine process (vllm serve, in the load tests) needs for the same options."""
    env = dict(os.environ)
    _set_kv_cache_space(config, env)
    _preload_allocator(config, env)
    return env


def tcmalloc_path() -> str | None:
    return next((path for pattern in TCMALLOC_PATTERNS for path in sorted(glob.glob(pattern))), None)


def _preload_allocator(config: EngineConfig, env: MutableMapping[str, str]) -> None:
    """tcmalloc first in LD_PRELOAD for the CPU build's engine process, where the library is installed and nothing
    preloads an allocator already; logged once if it is wanted but missing."""
    if config.cpu_allocator != "tcmalloc" or not is_cpu_build():
        return
    preloaded = env.get(PRELOAD_VARIABLE, "")
    if "tcmalloc" in preloaded or "jemalloc" in preloaded:
        return
    path = tcmalloc_path()
    if path is None:
        logger.info("cpu_allocator is tcmalloc but libtcmalloc_minimal.so.4 is not installed (Debian: "
                    "libtcmalloc-minimal4): the engine uses the system allocator")
        return
    env[PRELOAD_VARIABLE] = f"{path}:{preloaded}" if preloaded else path


def _set_kv_cache_space(config: EngineConfig, env: MutableMapping[str, str]) -> None:
    """The profile's kv_cache_space_gib wins over a VLLM_CPU_KVCACHE_SPACE inherited from a parent process (a
    server started by another, which set it for its own engine), said in a warning when they differ."""
    if config.kv_cache_space_gib is None:
        return
    wanted = str(config.kv_cache_space_gib)
    inherited = env.get(KV_CACHE_SPACE_VARIABLE)
    if inherited not in (None, wanted):
        logger.warning("%s=%s in the environment is overridden by kv_cache_space_gib=%s (KV_CACHE_SPACE_GIB sets it)",
                       KV_CACHE_SPACE_VARIABLE, inherited, wanted)
    env[KV_CACHE_SPACE_VARIABLE] = wanted
