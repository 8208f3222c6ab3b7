"""ChatEngine: vLLM's AsyncLLM behind a small typed interface (render chat, stream deltas, abort, stats, shutdown)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.config import EngineConfig, build_engine_args
from engine.stats import SchedulerStatsRecorder
from engine.types import (
    ChatTemplateError,
    ChoiceDelta,
    EngineStats,
    EngineUnavailableError,
    InvalidRequestError,
    Prompt,
    PromptTooLongError,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)

logger = logging.getLogger(__name__)


def _client_error_types() -> tuple[type[BaseException], ...]:
    # vLLM's request-validation errors subclass ValueError in older releases and VLLMClientError in newer ones.
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


class ChatEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._llm: Any = None
        self._tokenizer: Any = None
        self._stats = SchedulerStatsRecorder()
        # Chat templates are Jinja plus tokenization: CPU work kept off the event loop, as vllm serve does.
        self._render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-template")
        self._client_errors: tuple[type[BaseException], ...] = (ValueError, TypeError)
        self._aborts: set[asyncio.Future[None]] = set()

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

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

        self._client_errors = _client_error_types()
        self._llm = AsyncLLM.from_engine_args(build_engine_args(self.config), stat_loggers=[self._stats.factory])
        tokenizer = self._llm.get_tokenizer()
        # EngineClient.get_tokenizer was a coroutine in older vLLM releases.
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
        self._render_pool.shutdown(wait=False, cancel_futures=True)

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

    async def render(self, messages: Sequence[dict[str, str]]) -> Prompt:
        """Apply the model's own chat template and tokenize, in a worker thread."""
        self._require_running()
        loop = asyncio.get_running_loop()
        text, token_ids = await loop.run_in_executor(self._render_pool, self._render_sync, list(messages))
        return Prompt(token_ids=token_ids, text=text)

    def _render_sync(self, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
        from jinja2 import TemplateError

        try:
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            # A template may refuse a message order (two system messages, say): that is the caller's input.
            raise ChatTemplateError(f"the model's chat template rejected these messages: {exc}") from None
        return text, list(self._tokenizer.encode(text, add_special_tokens=False))

    def output_budget(self, prompt: Prompt, max_tokens: int | None) -> int:
        """The number of tokens the reply may have; raises PromptTooLongError when the context cannot hold it."""
        room = self.max_model_len - prompt.num_tokens
        if room <= 0:
            raise PromptTooLongError(
                f"the prompt has {prompt.num_tokens} tokens; this model's context is {self.max_model_len} tokens"
            )
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise PromptTooLongError(
                f"the prompt ({prompt.num_tokens} tokens) plus max_tokens ({max_tokens}) exceeds this model's "
                f"context of {self.max_model_len} tokens; ask for at most {room} tokens"
            )
        return max_tokens

    def generate(self, prompt: Prompt, options: SamplingOptions, request_id: str) -> AsyncIterator[StepOutput]:
        """Stream the reply step by step. Closing the iterator early aborts the request in the engine.

        Parameters are checked here, before anything is streamed: a bad request raises at once
        (PromptTooLongError, InvalidRequestError), so the server can still answer it with a 4xx.
        """
        self._require_running()
        params = self._sampling_params(prompt, options)
        return self._stream(prompt, params, options.logprobs, request_id)

    async def _stream(self, prompt: Prompt, params: Any, top_logprobs: int | None, request_id: str
                      ) -> AsyncIterator[StepOutput]:
        engine_prompt: dict[str, Any] = {"prompt_token_ids": prompt.token_ids}
        if prompt.text is not None:
            # Without the text, vLLM decodes the whole prompt again (in a thread) before scheduling it.
            engine_prompt["prompt"] = prompt.text
        stream = self._llm.generate(engine_prompt, params, request_id)
        want_logprobs = top_logprobs is not None
        finished = False
        try:
            async for output in stream:
                finished = output.finished
                yield StepOutput([_choice_delta(choice, want_logprobs, top_logprobs or 0)
                                  for choice in output.outputs])
        except self._client_errors as exc:
            raise InvalidRequestError(str(exc)) from None
        finally:
            if not finished:
                # A cancelled consumer (client gone) may have every await here interrupted again (anyio delivers
                # cancellation until its scope exits), so the abort that frees the engine runs as its own task.
                abort = asyncio.ensure_future(self._llm.abort(request_id))
                self._aborts.add(abort)
                abort.add_done_callback(self._aborts.discard)
            await stream.aclose()

    def _require_running(self) -> None:
        if self._llm is None:
            raise EngineUnavailableError("the engine is not running")
        if self._llm.errored:
            raise EngineUnavailableError("the engine has stopped after an error")

    def _sampling_params(self, prompt: Prompt, options: SamplingOptions) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        try:
            return SamplingParams(
                n=options.n,
                max_tokens=self.output_budget(prompt, options.max_tokens),
                temperature=options.temperature,
                top_p=options.top_p,
                top_k=options.top_k,
                seed=options.seed,
                stop=options.stop or None,
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
                repetition_penalty=options.repetition_penalty,
                logprobs=options.logprobs,
                ignore_eos=options.ignore_eos,
                min_tokens=options.min_tokens,
                output_kind=RequestOutputKind.DELTA,
            )
        except PromptTooLongError:
            raise
        except self._client_errors as exc:
            raise InvalidRequestError(str(exc)) from exc


def _choice_delta(choice: Any, want_logprobs: bool, top_n: int) -> ChoiceDelta:
    return ChoiceDelta(
        index=choice.index,
        text=choice.text,
        num_tokens=len(choice.token_ids),
        finish_reason=choice.finish_reason,
        logprobs=_logprobs(choice.token_ids, choice.logprobs, top_n) if want_logprobs else None,
    )


def _logprobs(token_ids: Sequence[int], positions: Any, top_n: int) -> list[TokenLogprob]:
    result: list[TokenLogprob] = []
    for token_id, candidates in zip(token_ids, positions or ()):
        chosen = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank if lp.rank is not None else math.inf)
        result.append(TokenLogprob(
            token=chosen.decoded_token or "",
            logprob=chosen.logprob,
            top=[(lp.decoded_token or "", lp.logprob) for lp in ranked[:top_n]],
        ))
    return result
