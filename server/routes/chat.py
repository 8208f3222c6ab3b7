"""POST /v1/chat/completions: the OpenAI chat API over the engine, streamed (SSE) or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from engine import (
    ChatEngine,
    EngineUnavailableError,
    InvalidRequestError,
    PromptTooLongError,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)
from server.disconnect import EventStreamResponse, cancel_on_disconnect
from server.errors import ERROR_TYPES, APIError
from server.auth import Principal
from server.metrics import aborted_requests, admission_rejections, rate_limit_rejections, sse_streams_active
from server.ratelimit import LimiterUnavailable, LimitExceeded, RateLimits, Reservation
from server.openai_format import DONE_EVENT, ChunkWriter, completion_body, completion_id, sse_event
from server.schemas import ChatCompletionRequest, ChatMessage, decode_chat_request
from server.settings import Settings
from server.tracing import GenerationSpans, tracer

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
    body = decode_chat_request(await request.body())
    if body.model is not None and body.model != engine.model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {engine.model_name!r}",
                       param="model")
    messages = to_chat_messages(body.messages)
    options = sampling_options(body, settings)
    request_id = completion_id()
    spans = GenerationSpans(engine.model_name, request_id, options.max_tokens, options.temperature)
    try:
        with tracer.start_as_current_span("prompt.build"):
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
    reservation = await admit(request, engine, prompt.num_tokens + engine.output_budget(prompt, options.max_tokens)
                              * options.n)
    tally = Tally(engine.model_name, prompt.num_tokens, body.n, spans, request.scope.setdefault("state", {}),
                  reservation)

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        writer = ChunkWriter(request_id, engine.model_name, include_usage=include_usage)
        return EventStreamResponse(stream_events(steps, writer, tally), finalize=tally.close)

    try:
        result = await cancel_on_disconnect(request.receive,
                                            lambda: collect(steps, tally, options.logprobs is not None))
    finally:
        await tally.close()
    if result is None:
        aborted_requests.labels(engine.model_name, "client_disconnect").inc()
        return Response(status_code=499)  # the client is gone; nobody reads this
    texts, logprobs = result
    return Response(
        msgspec.json.encode(completion_body(request_id, engine.model_name, texts, tally.finish_reasons, logprobs,
                                            prompt.num_tokens, tally.completion_tokens)),
        media_type="application/json",
    )


async def admit(request: Request, engine: ChatEngine, tokens: int) -> Reservation | None:
    """Global admission control, then the caller's token budget and stream slot; raises 503 or 429."""
    settings: Settings = request.app.state.settings
    if engine.requests_in_flight >= settings.max_inflight_generations:
        admission_rejections.labels(engine.model_name).inc()
        raise APIError(503, f"the server is at capacity ({settings.max_inflight_generations} generations in "
                            "flight); retry shortly", headers={"Retry-After": "1"})
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        return None
    limits: RateLimits = request.app.state.limits
    try:
        return await limits.reserve(principal.subject, principal.quota, tokens)
    except LimitExceeded as exc:
        rate_limit_rejections.labels(engine.model_name, exc.limit).inc()
        raise APIError(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except LimiterUnavailable as exc:
        raise APIError(503, str(exc), headers={"Retry-After": "5"}) from None


class Tally:
    """What one generation produced so far: token counts and finish reasons, for the response, the access log,
    the span attributes, the metrics and the caller's token budget."""

    def __init__(self, model: str, prompt_tokens: int, n: int, spans: GenerationSpans, state: dict,
                 reservation: Reservation | None) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reasons: list[str | None] = [None] * n
        self.spans = spans
        self.state = state
        self.reservation = reservation
        self.closed = False

    def add(self, step: StepOutput) -> None:
        if self.completion_tokens == 0:
            self.spans.first_token()
        for choice in step.choices:
            self.completion_tokens += choice.num_tokens
            if choice.finish_reason is not None:
                self.finish_reasons[choice.index] = choice.finish_reason

    async def close(self) -> None:
        """Record the outcome and give back the unused token budget. Runs even when the client is gone."""
        if self.closed:
            return
        self.closed = True
        self.state["usage"] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        self.spans.finish(self.prompt_tokens, self.completion_tokens, [r or "abort" for r in self.finish_reasons])
        if self.reservation is not None:
            # Shielded: a cancelled request (client gone) would otherwise have this await cancelled too.
            with anyio.CancelScope(shield=True):
                await self.reservation.settle(self.prompt_tokens + self.completion_tokens)


async def collect(steps: AsyncIterator[StepOutput], tally: Tally, want_logprobs: bool
                  ) -> tuple[list[str], list[list[TokenLogprob]] | None]:
    n = len(tally.finish_reasons)
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(n)] if want_logprobs else None
    try:
        async for step in steps:
            tally.add(step)
            for choice in step.choices:
                texts[choice.index].append(choice.text)
                if logprobs is not None and choice.logprobs:
                    logprobs[choice.index].extend(choice.logprobs)
    except InvalidRequestError as exc:
        raise APIError(400, str(exc)) from None
    return ["".join(parts) for parts in texts], logprobs


async def stream_events(steps: AsyncIterator[StepOutput], writer: ChunkWriter, tally: Tally) -> AsyncIterator[bytes]:
    active = sse_streams_active.labels(tally.model)
    active.inc()
    finished = False
    # The role chunk goes out with the first token, as vllm serve sends it: a client that times the first chunk
    # (vllm bench serve does) then measures time to first token, not time to an empty chunk.
    role = writer.role(len(tally.finish_reasons))
    try:
        try:
            async for step in steps:
                tally.add(step)
                event = writer.deltas(step.choices)
                if event is not None:
                    yield role + event if role else event
                    role = b""
        except (InvalidRequestError, EngineUnavailableError) as exc:
            # The status line is sent already: report in-band, as OpenAI and vLLM do, then end the stream.
            status = 503 if isinstance(exc, EngineUnavailableError) else 400
            yield role + sse_event({"error": {"message": str(exc), "type": ERROR_TYPES[status], "code": status,
                                              "param": None, "path": "/v1/chat/completions"}})
            role = b""
        else:
            if role:
                yield role
            if writer.include_usage:
                yield writer.usage(tally.prompt_tokens, tally.completion_tokens)
        finally:
            await steps.aclose()  # type: ignore[attr-defined]
        yield DONE_EVENT
        finished = True
    finally:
        active.dec()
        if not finished:
            aborted_requests.labels(tally.model, "client_disconnect").inc()
        await tally.close()
