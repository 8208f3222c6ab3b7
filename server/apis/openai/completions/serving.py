"""Completions (/v1/completions): each prompt of the request is a generation on the one generation path; their
outputs are merged into OpenAI's text_completion body or chunks (choice index = prompt index x n + choice)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from engine import EngineClient, InvalidRequestError, PromptTooLongError, StepOutput, TokenLogprob
from server.adapters.catalog import ModelCatalog
from server.apis.openai.chunks import ABORTED, STOP, StreamErrorFraming, usage
from server.apis.openai.completions.protocol import CompletionRequest
from server.generation.generator import STREAM_ERRORS, Generation, Generator, LogprobBudget
from server.generation.refusals import engine_refusal, served_model
from server.generation.stream_accounting import StreamAccounting
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.sse import DONE, EventStream, frame

COMPLETION_ID_PREFIX = "cmpl-"
TEXT_COMPLETION = "text_completion"


@dataclass(slots=True)
class CompletionRun:
    generations: list[Generation]
    request: CompletionRequest
    completion_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    async def close(self) -> None:
        for generation in self.generations:
            await generation.close()

    def choice_index(self, prompt_index: int, choice_index: int) -> int:
        return prompt_index * self.generations[prompt_index].prepared.n + choice_index

    @property
    def prompt_tokens(self) -> int:
        return sum(g.tally.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.tally.completion_tokens for g in self.generations)

    @property
    def cached_tokens(self) -> int | None:
        cached = [g.tally.cached_tokens for g in self.generations if g.tally.cached_tokens is not None]
        return sum(cached) if cached else None


class CompletionLogprobs:
    """OpenAI's completions logprobs for one choice: tokens, their logprobs, the top alternatives, text offsets."""

    def __init__(self, start_offset: int = 0) -> None:
        self.offset = start_offset
        self.body: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, entries: list[TokenLogprob]) -> dict[str, list[Any]]:
        part: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            part["tokens"].append(entry.token)
            part["token_logprobs"].append(entry.logprob)
            part["top_logprobs"].append(dict(entry.top))
            part["text_offset"].append(self.offset)
            self.offset += len(entry.token)
        for key, values in part.items():
            self.body[key].extend(values)
        return part


class Completions:
    def __init__(self, engine: EngineClient, models: ModelCatalog, generator: Generator, salter: CacheSalter) -> None:
        self.engine = engine
        self.models = models
        self.generator = generator
        self.salter = salter

    async def start(self, request: CompletionRequest, principal: Principal | None,
                    usage_sink: MutableMapping[str, Any], request_id: str) -> CompletionRun:
        served = served_model(self.models, principal, request.model)
        completion_id = COMPLETION_ID_PREFIX + request_id
        run = CompletionRun([], request, completion_id, served.name)
        inputs = request.completion_inputs()
        choices = len(inputs) * (request.n or 1)
        await self.generator.precheck(principal, choices=choices, priority=request.priority or 0,
                                      min_tokens=(request.max_tokens or 0) * choices)
        # One budget for the whole request: every prompt's log probabilities count, checked before any starts.
        logprobs = LogprobBudget("logprobs", "the number of prompts, n, max_tokens or logprobs")
        try:
            prepared = []
            for index, item in enumerate(inputs):
                self.salter.apply(item.fields, principal)
                prepared.append(await self.engine.prepare_completion(item, f"{completion_id}-{index}"))
                prepared[-1].adapter = served.adapter
                logprobs.charge(prepared[-1])
            for one in prepared:
                run.generations.append(await self.generator.start(principal, one, usage_sink=usage_sink,
                                                                  logprobs=logprobs))
        except (PromptTooLongError, InvalidRequestError) as exc:
            await run.close()
            raise engine_refusal(exc, "prompt") from None
        except BaseException:
            await run.close()
            raise
        return run

    async def collect(self, run: CompletionRun) -> dict[str, Any]:
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        logprobs: dict[int, CompletionLogprobs] = {}
        want_logprobs = run.request.logprobs is not None
        for prompt_index, generation in enumerate(run.generations):
            for choice_index in range(generation.prepared.n):
                index = run.choice_index(prompt_index, choice_index)
                echo = generation.prepared.echo or ""
                texts[index] = [echo]
                logprobs[index] = CompletionLogprobs(len(echo))
        try:
            async for prompt_index, step in merged(run.generations):
                for choice in step.choices:
                    index = run.choice_index(prompt_index, choice.index)
                    texts[index].append(choice.text)
                    if choice.finish_reason is not None:
                        finish[index] = choice.finish_reason
                    if want_logprobs and choice.logprobs:
                        logprobs[index].add(choice.logprobs)
        except InvalidRequestError as exc:
            raise engine_refusal(exc, "prompt") from None
        choices = [{"index": index, "text": "".join(texts[index]),
                    "logprobs": logprobs[index].body if want_logprobs else None,
                    "finish_reason": finish.get(index) if finish.get(index) not in (None, ABORTED) else STOP}
                   for index in sorted(texts)]
        return {"id": run.completion_id, "object": TEXT_COMPLETION, "created": run.created, "model": run.model,
                "system_fingerprint": self.engine.fingerprint, "choices": choices,
                "usage": usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens)}

    async def events(self, run: CompletionRun, error_event: StreamErrorFraming) -> EventStream:
        """The completions as text_completion chunks, ending with [DONE]; an engine error after the first byte is
        reported in-band (`error_event`)."""
        request = run.request
        head = {"id": run.completion_id, "object": TEXT_COMPLETION, "created": run.created, "model": run.model,
                "system_fingerprint": self.engine.fingerprint}
        echoed: set[int] = set()
        logprobs: dict[int, CompletionLogprobs] = {}
        async with StreamAccounting(run.model, run.close):
            try:
                async for prompt_index, step in merged(run.generations):
                    prepared = run.generations[prompt_index].prepared
                    choices = []
                    for choice in step.choices:
                        index = run.choice_index(prompt_index, choice.index)
                        text = choice.text
                        if index not in echoed:
                            echoed.add(index)
                            text = (prepared.echo or "") + text
                            logprobs[index] = CompletionLogprobs(len(prepared.echo or ""))
                        finish = choice.finish_reason if choice.finish_reason != ABORTED else None
                        if not text and finish is None:
                            continue
                        choices.append({"index": index, "text": text,
                                        "logprobs": (logprobs[index].add(choice.logprobs or [])
                                                     if request.logprobs is not None else None),
                                        "finish_reason": finish})
                    if choices:
                        chunk: dict[str, Any] = {**head, "choices": choices}
                        if request.include_usage:
                            chunk["usage"] = (usage(run.prompt_tokens, run.completion_tokens)
                                              if request.continuous_usage else None)
                        yield frame(chunk)
            except STREAM_ERRORS as exc:
                yield error_event(exc)
            else:
                if request.include_usage:
                    yield frame({**head, "choices": [],
                                 "usage": usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens)})
            yield DONE


async def merged(generations: list[Generation]) -> AsyncIterator[tuple[int, StepOutput]]:
    """The steps of several generations as they come, each with its generation's index; the first error raises."""
    if len(generations) == 1:
        async for step in generations[0]:
            yield 0, step
        return
    queue: asyncio.Queue[tuple[int, StepOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for step in generation:
                await queue.put((index, step, None))
        except Exception as exc:
            await queue.put((index, None, exc))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(index, generation)) for index, generation in enumerate(generations)]
    try:
        remaining = len(tasks)
        while remaining:
            index, maybe_step, error = await queue.get()
            if error is not None:
                raise error
            if maybe_step is None:
                remaining -= 1
            else:
                yield index, maybe_step
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
