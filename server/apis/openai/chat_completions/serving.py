"""Chat completions: render the messages with vLLM's machinery, start a generation on the one generation path, then
collect it into a chat.completion body or frame it as chat.completion.chunk events."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from engine import EngineClient, InvalidRequestError
from server.adapters.catalog import ModelCatalog
from server.apis.openai.chat_completions.protocol import ChatCompletionRequest
from server.apis.openai.chunks import (
    COMPLETION_ID_PREFIX,
    ChunkWriter,
    MessageBuilder,
    StreamErrorFraming,
    usage,
)
from server.generation.chat_start import start_chat
from server.generation.generator import STREAM_ERRORS, Generation, Generator
from server.generation.heartbeats import with_heartbeats
from server.generation.refusals import engine_refusal, served_model
from server.generation.stream_accounting import StreamAccounting
from server.security.auth import Principal
from server.security.cache_salt import CacheSalter
from server.sse import DONE, HEARTBEAT, EventStream


@dataclass(slots=True)
class ChatCompletion:
    """A started chat completion: its generation and how to frame it."""

    generation: Generation
    request: ChatCompletionRequest
    completion_id: str
    model: str

    async def close(self) -> None:
        await self.generation.close()


class ChatCompletions:
    def __init__(self, engine: EngineClient, models: ModelCatalog, generator: Generator, heartbeat_s: float,
                 salter: CacheSalter) -> None:
        self.engine = engine
        self.models = models
        self.generator = generator
        self.heartbeat_s = heartbeat_s
        self.salter = salter

    async def start(self, request: ChatCompletionRequest, principal: Principal | None,
                    usage_sink: MutableMapping[str, Any], request_id: str) -> ChatCompletion:
        """Everything that can refuse the request happens here, before a byte of the response is sent."""
        served = served_model(self.models, principal, request.model)
        completion_id = COMPLETION_ID_PREFIX + request_id
        choices = request.n or 1
        generation = await start_chat(
            self.engine, self.generator, self.salter, principal, request.chat_input(), request_id=completion_id,
            choices=choices, priority=request.priority or 0,
            min_tokens=(request.max_completion_tokens or request.max_tokens or 0) * choices, usage_sink=usage_sink,
            adapter=served.adapter)
        return ChatCompletion(generation, request, completion_id, served.name)

    async def collect(self, completion: ChatCompletion) -> dict[str, Any]:
        """The whole reply as one chat.completion body."""
        generation, request = completion.generation, completion.request
        prepared = generation.prepared
        builders = [MessageBuilder(prepared.echo) for _ in range(prepared.n)]
        prompt_logprobs = None
        try:
            async for step in generation:
                prompt_logprobs = step.prompt_logprobs or prompt_logprobs
                for choice in step.choices:
                    builders[choice.index].add(choice)
        except InvalidRequestError as exc:
            raise engine_refusal(exc, "messages") from None
        tally = generation.tally
        body: dict[str, Any] = {
            "id": completion.completion_id, "object": "chat.completion", "created": tally.created,
            "model": completion.model, "system_fingerprint": self.engine.fingerprint,
            "choices": [builder.choice(index, want_logprobs=bool(request.logprobs),
                                       want_token_ids=bool(request.return_token_ids))
                        for index, builder in enumerate(builders)],
            "usage": usage(tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens),
        }
        if prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs
        if request.return_token_ids:
            body["prompt_token_ids"] = prepared.prompt.token_ids
        return body

    async def events(self, completion: ChatCompletion, error_event: StreamErrorFraming) -> EventStream:
        """The reply as chat.completion.chunk events, ending with [DONE]. While the request waits in the engine's
        queue, keep-alive comments; an engine error after the first byte is reported in-band (`error_event`), as
        OpenAI and vLLM do, and the stream still ends with [DONE]."""
        generation, request = completion.generation, completion.request
        tally = generation.tally
        writer = ChunkWriter(completion.completion_id, completion.model, self.engine.fingerprint,
                             include_usage=request.include_usage, continuous_usage=request.continuous_usage)
        # The role chunk goes out with the first token, as vllm serve sends it: a client that times the first chunk
        # (vllm bench serve does) then measures time to first token, not time to an empty chunk.
        role = writer.role(generation.prepared.n, generation.prepared.echo)
        async with StreamAccounting(completion.model, completion.close):
            try:
                async for step in with_heartbeats(generation, self.heartbeat_s):
                    if step is None:
                        yield HEARTBEAT
                        continue
                    if not role and (framed := writer.content_only(step.choices)) is not None:
                        yield framed
                        continue
                    choices = writer.deltas(step.choices)
                    if not choices:
                        continue
                    so_far = usage(tally.prompt_tokens, tally.completion_tokens) if writer.continuous_usage else None
                    if role:
                        yield writer.chunk(role, so_far) + writer.chunk(choices, so_far)
                        role = []
                    else:
                        yield writer.chunk(choices, so_far)
            except STREAM_ERRORS as exc:
                yield error_event(exc)
            else:
                if role:
                    yield writer.chunk(role, usage(tally.prompt_tokens, 0))
                if writer.include_usage:
                    yield writer.usage(usage(tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens))
            yield DONE
