"""POST /v1/chat/completions: the OpenAI chat API over the engine, streamed (SSE) or not."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from engine import (
    ChatEngine,
    EngineUnavailableError,
    InvalidRequestError,
    Prompt,
    PromptTooLongError,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)
from server.disconnect import EventStreamResponse, cancel_on_disconnect
from server.errors import APIError
from server.openai_format import DONE_EVENT, ChunkWriter, completion_body, completion_id, sse_event
from server.schemas import ChatCompletionRequest, ChatMessage, chat_request_decoder
from server.settings import Settings

_PATH_IN_ERROR = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def decode_request(body: bytes) -> ChatCompletionRequest:
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        return chat_request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_IN_ERROR.search(message)
        raise APIError(400, message, param=match.group("path") if match else None) from None
    except msgspec.DecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"content part of type {part.type!r} is not supported; this model reads text only",
                           param=f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


def to_chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
    converted = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
                 for i, m in enumerate(messages)]
    if all(m["role"] != "user" for m in converted):
        raise APIError(400, "messages must contain at least one user message", param="messages")
    return converted


def sampling_options(request: ChatCompletionRequest, settings: Settings) -> SamplingOptions:
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not sequence for sequence in stop):
        raise APIError(400, "stop sequences must not be empty strings", param="stop")
    return SamplingOptions(
        max_tokens=request.max_completion_tokens or request.max_tokens or settings.max_tokens,
        temperature=settings.temperature if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=0 if request.top_k in (None, -1) else request.top_k,
        n=request.n,
        seed=request.seed,
        stop=stop,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
    )


async def chat_completions(request: Request) -> Response:
    engine: ChatEngine = request.app.state.engine
    settings: Settings = request.app.state.settings
    body = decode_request(await request.body())
    if body.model is not None and body.model != engine.model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {engine.model_name!r}",
                       param="model")
    messages = to_chat_messages(body.messages)
    options = sampling_options(body, settings)
    request_id = completion_id()
    try:
        prompt = await engine.render(messages)
        steps = engine.generate(prompt, options, request_id)
    except PromptTooLongError as exc:
        raise APIError(400, str(exc), param="messages") from None
    except InvalidRequestError as exc:
        raise APIError(400, str(exc)) from None
    except EngineUnavailableError as exc:
        raise APIError(503, str(exc)) from None
    except Exception as exc:
        # A chat template may refuse a message order (e.g. two system messages): that is the client's input.
        if type(exc).__name__ == "TemplateError":
            raise APIError(400, f"the model's chat template rejected these messages: {exc}",
                           param="messages") from None
        raise

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        writer = ChunkWriter(request_id, engine.model_name, include_usage=include_usage)
        return EventStreamResponse(stream_events(steps, writer, prompt, body.n))

    result = await cancel_on_disconnect(request.receive, lambda: collect(steps, body.n, options.logprobs is not None))
    if result is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    texts, finish_reasons, logprobs, completion_tokens = result
    return Response(
        msgspec.json.encode(completion_body(request_id, engine.model_name, texts, finish_reasons, logprobs,
                                            prompt.num_tokens, completion_tokens)),
        media_type="application/json",
    )


async def collect(steps: AsyncIterator[StepOutput], n: int, want_logprobs: bool
                  ) -> tuple[list[str], list[str | None], list[list[TokenLogprob]] | None, int]:
    texts: list[list[str]] = [[] for _ in range(n)]
    finish_reasons: list[str | None] = [None] * n
    logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(n)] if want_logprobs else None
    completion_tokens = 0
    try:
        async for step in steps:
            for choice in step.choices:
                texts[choice.index].append(choice.text)
                completion_tokens += choice.num_tokens
                if choice.finish_reason is not None:
                    finish_reasons[choice.index] = choice.finish_reason
                if logprobs is not None and choice.logprobs:
                    logprobs[choice.index].extend(choice.logprobs)
    except InvalidRequestError as exc:
        raise APIError(400, str(exc)) from None
    return ["".join(parts) for parts in texts], finish_reasons, logprobs, completion_tokens


async def stream_events(steps: AsyncIterator[StepOutput], writer: ChunkWriter, prompt: Prompt, n: int
                        ) -> AsyncIterator[bytes]:
    completion_tokens = 0
    yield writer.role(n)
    try:
        async for step in steps:
            completion_tokens += sum(choice.num_tokens for choice in step.choices)
            event = writer.deltas(step.choices)
            if event is not None:
                yield event
    except (InvalidRequestError, EngineUnavailableError) as exc:
        # The status line is sent already: report in-band, as OpenAI and vLLM do, then end the stream.
        yield sse_event({"error": {"message": str(exc), "type": "invalid_request_error", "code": 400,
                                   "param": None, "path": "/v1/chat/completions"}})
    else:
        if writer.include_usage:
            yield writer.usage(prompt.num_tokens, completion_tokens)
    finally:
        await steps.aclose()  # type: ignore[attr-defined]
    yield DONE_EVENT
