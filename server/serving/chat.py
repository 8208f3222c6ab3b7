"""Chat completions: render the messages, start a generation on the one generation path, then collect it into a
chat.completion body or frame it as chat.completion.chunk events."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from engine import (
    ChatEngine,
    ChatTemplateError,
    EngineUnavailableError,
    InvalidRequestError,
    PromptTooLongError,
    TokenLogprob,
)
from server.errors import error_body, status_of
from server.exceptions import InvalidRequest, NotFound
from server.protocol.chat import ChatCompletionRequest
from server.protocol.sampling import SamplingDefaults
from server.security.auth import Principal
from server.serving.generation import Generation, Generator
from server.serving.openai_format import ChunkWriter, completion_body, completion_id
from server.serving.sse import DONE, EventStream, frame
from server.telemetry.metrics import AbortReason, aborted_requests, sse_streams_active
from server.telemetry.tracing import tracer

CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class ChatCompletion:
    """A started chat completion: its generation and how to frame it."""

    generation: Generation
    request: ChatCompletionRequest
    model: str

    async def close(self) -> None:
        await self.generation.close()


class ChatCompletions:
    def __init__(self, engine: ChatEngine, generator: Generator, defaults: SamplingDefaults) -> None:
        self.engine = engine
        self.generator = generator
        self.defaults = defaults

    async def start(self, request: ChatCompletionRequest, principal: Principal | None,
                    usage_sink: MutableMapping[str, Any]) -> ChatCompletion:
        """Everything that can refuse the request happens here, before a byte of the response is sent."""
        model = self.engine.model_name
        if request.model is not None and request.model != model:
            raise NotFound(f"the model {request.model!r} does not exist; this server serves {model!r}",
                           param="model")
        messages = request.chat_messages()
        options = request.sampling_options(self.defaults)
        try:
            with tracer.start_as_current_span("prompt.build"):
                prompt = await self.engine.render(messages)
            generation = await self.generator.start(principal, prompt, options, completion_id(),
                                                    usage_sink=usage_sink)
        except PromptTooLongError as exc:
            raise InvalidRequest(str(exc), param="messages") from None
        except InvalidRequestError as exc:
            raise InvalidRequest(str(exc), param="messages" if isinstance(exc, ChatTemplateError) else None) from None
        return ChatCompletion(generation, request, model)

    async def collect(self, completion: ChatCompletion) -> dict[str, Any]:
        """The whole reply as one chat.completion body."""
        generation = completion.generation
        n = generation.options.n
        texts: list[list[str]] = [[] for _ in range(n)]
        want_logprobs = generation.options.logprobs is not None
        logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(n)] if want_logprobs else None
        try:
            async for step in generation:
                for choice in step.choices:
                    texts[choice.index].append(choice.text)
                    if logprobs is not None and choice.logprobs:
                        logprobs[choice.index].extend(choice.logprobs)
        except InvalidRequestError as exc:
            raise InvalidRequest(str(exc)) from None
        tally = generation.tally
        return completion_body(generation.request_id, completion.model, ["".join(parts) for parts in texts],
                               tally.finish_reasons, logprobs, tally.prompt_tokens, tally.completion_tokens)

    async def events(self, completion: ChatCompletion) -> EventStream:
        """The reply as chat.completion.chunk events, ending with [DONE]; an engine error after the first byte is
        reported in-band, as OpenAI and vLLM do."""
        generation = completion.generation
        writer = ChunkWriter(generation.request_id, completion.model, include_usage=completion.request.include_usage)
        active = sse_streams_active.labels(completion.model)
        active.inc()
        finished = False
        # The role chunk goes out with the first token, as vllm serve sends it: a client that times the first chunk
        # (vllm bench serve does) then measures time to first token, not time to an empty chunk.
        role = writer.role(generation.options.n)
        try:
            try:
                async for step in generation:
                    event = writer.deltas(step.choices)
                    if event is not None:
                        yield role + event if role else event
                        role = b""
            except (InvalidRequestError, EngineUnavailableError) as exc:
                status = status_of(exc)
                yield role + frame(error_body(status, str(exc), path=CHAT_PATH))
                role = b""
            else:
                if role:
                    yield role
                if writer.include_usage:
                    yield writer.usage(generation.tally.prompt_tokens, generation.tally.completion_tokens)
            yield DONE
            finished = True
        finally:
            active.dec()
            if not finished:
                aborted_requests.labels(completion.model, AbortReason.CLIENT_DISCONNECT).inc()
            await completion.close()
