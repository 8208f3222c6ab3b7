"""The one generation path, whatever the route: admission control, the caller's token budget and stream slot, the
engine stream, and a tally of what came out, settled once when the generation ends however it ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio

from engine import ChatEngine, PreparedRequest, StepOutput
from server.exceptions import InvalidRequest, Overloaded, Unavailable
from server.security.auth import Principal
from server.security.ratelimit import LimitExceeded, RateLimits, Reservation
from server.serving.fairness import ANONYMOUS, FairShare, Place
from server.telemetry.metrics import admission_rejections, rate_limit_rejections, tenant_queue_time, tenant_ttft
from server.telemetry.tracing import GenerationSpans

ADMISSION_RETRY_AFTER_S = 1
# Log probabilities a request may ask for in all (choices x tokens x alternatives): each one is an object in the
# answer, so this bounds its memory (about 200 bytes each).
MAX_LOGPROB_ENTRIES = 200_000


def check_logprob_budget(prepared: PreparedRequest) -> None:
    sampled = prepared.n * prepared.max_tokens * (prepared.logprobs + 1) if prepared.logprobs is not None else 0
    prompt = (prepared.prompt.num_tokens * (prepared.prompt_logprobs + 1)
              if prepared.prompt_logprobs is not None and prepared.prompt_logprobs >= 0 else 0)
    if sampled + prompt > MAX_LOGPROB_ENTRIES:
        raise InvalidRequest(f"this request asks for {sampled + prompt} log probabilities (choices x tokens x "
                             f"alternatives), more than {MAX_LOGPROB_ENTRIES}; lower n, max_tokens or top_logprobs",
                             param="top_logprobs" if sampled > prompt else "prompt_logprobs")
ABORTED = "abort"


class Admission:
    """Global admission control, then the caller's limits: what every generation passes before the engine sees it.

    Generations are counted here from the moment they are admitted (the engine counts a request only once it has
    been submitted, so a burst checked against the engine's count alone would all pass together)."""

    def __init__(self, engine: ChatEngine, limits: RateLimits, max_inflight: int) -> None:
        self.engine = engine
        self.limits = limits
        self.max_inflight = max_inflight
        self.admitted = 0
        self.draining = False

    async def admit(self, principal: Principal | None, tokens: int, choices: int) -> Reservation | None:
        """Raises Unavailable (draining), Overloaded (server full), LimitExceeded or LimiterUnavailable (the
        caller's limits). A successful admission is released with `release(choices)`."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica",
                              retry_after_s=ADMISSION_RETRY_AFTER_S)
        if max(self.admitted, self.engine.requests_in_flight) + choices > self.max_inflight:
            admission_rejections.labels(self.engine.model_name).inc()
            raise Overloaded(f"the server is at capacity ({self.max_inflight} generations in flight); retry shortly",
                             retry_after_s=ADMISSION_RETRY_AFTER_S)
        self.admitted += choices
        if principal is None:
            return None
        try:
            return await self.limits.reserve_all(principal.budgets, tokens)
        except BaseException as exc:
            self.release(choices)
            if isinstance(exc, LimitExceeded):
                rate_limit_rejections.labels(self.engine.model_name, exc.limit).inc()
            raise

    def release(self, choices: int) -> None:
        self.admitted -= choices


class Tally:
    """What one generation produced so far: token counts and finish reasons, for the response, the access log,
    the span attributes, the metrics and the caller's token budget."""

    def __init__(self, prompt_tokens: int, n: int, spans: GenerationSpans, usage_sink: MutableMapping[str, Any],
                 reservation: Reservation | None, admission: Admission, place: Place, fair: FairShare) -> None:
        self.created = int(time.time())
        self.started = time.monotonic()
        self.prompt_tokens = prompt_tokens
        self.cached_tokens: int | None = None
        self.completion_tokens = 0
        self.finish_reasons: list[str | None] = [None] * n
        self.spans = spans
        self.usage_sink = usage_sink
        self.reservation = reservation
        self.admission = admission
        self.place = place
        self.fair = fair
        self.closed = False
        self.first_seen = False

    def add(self, step: StepOutput) -> None:
        if not self.first_seen:
            self.first_seen = True
            self.spans.first_token()
            model, share = self.admission.engine.model_name, self.place.share_class
            tenant_ttft.labels(model, share).observe(time.monotonic() - self.started)
            if step.queue_time_s is not None:
                tenant_queue_time.labels(model, share).observe(step.queue_time_s)
        if step.cached_tokens is not None:
            self.cached_tokens = step.cached_tokens
        for choice in step.choices:
            self.completion_tokens += choice.num_tokens
            if choice.finish_reason is not None:
                self.finish_reasons[choice.index] = choice.finish_reason

    async def close(self) -> None:
        """Record the outcome and give back the unused token budget. Runs even when the client is gone."""
        if self.closed:
            return
        self.closed = True
        self.admission.release(len(self.finish_reasons))
        self.fair.release(self.place)
        # Added up: one request may run several generations (a completion with several prompts).
        used = self.usage_sink.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
        used["prompt_tokens"] += self.prompt_tokens
        used["completion_tokens"] += self.completion_tokens
        self.spans.finish(self.prompt_tokens, self.completion_tokens, [r or ABORTED for r in self.finish_reasons])
        if self.reservation is not None:
            # Shielded: a cancelled request (client gone) would otherwise have this await cancelled too.
            with anyio.CancelScope(shield=True):
                await self.reservation.settle(self.prompt_tokens + self.completion_tokens)


class Interrupted(Unavailable):
    """The server stopped this generation (it is shutting down); the client should retry elsewhere."""


class Generation:
    """One admitted generation. Iterate it for the engine's steps (tallied as they pass); `close` ends it in the
    engine if it is still running and settles its budget, once. `interrupt` stops it from outside: the engine
    aborts it, and the consumer's iteration raises Interrupted."""

    def __init__(self, prepared: PreparedRequest, steps: AsyncIterator[StepOutput], tally: Tally,
                 generator: Generator) -> None:
        self.prepared = prepared
        self._steps = steps
        self.tally = tally
        self._generator = generator
        self.interruption: str | None = None

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        async for step in self._steps:
            self.tally.add(step)
            if self.interruption is not None:
                break
            yield step
        if self.interruption is not None:
            raise Interrupted(self.interruption, retry_after_s=ADMISSION_RETRY_AFTER_S)

    async def interrupt(self, reason: str) -> None:
        self.interruption = reason
        await self._generator.engine.abort(self.request_id)

    async def close(self) -> None:
        self._generator.live.discard(self)
        await self._steps.aclose()  # type: ignore[attr-defined]
        await self.tally.close()


class Generator:
    """Starts generations of prepared (rendered, checked) requests: admission and limits let one in, then the
    engine takes it."""

    def __init__(self, engine: ChatEngine, admission: Admission, fair: FairShare) -> None:
        self.engine = engine
        self.admission = admission
        self.fair = fair
        self.live: set[Generation] = set()

    async def start(self, principal: Principal | None, prepared: PreparedRequest, *,
                    usage_sink: MutableMapping[str, Any]) -> Generation:
        """Raises admission's errors, then the engine's (InvalidRequestError, EngineUnavailableError) if it refuses
        the request: all before a byte of the response is sent."""
        check_logprob_budget(prepared)
        self.fair.check(prepared.priority)
        prompt_tokens = prepared.prompt.num_tokens
        spans = GenerationSpans(self.engine.model_name, prepared.request_id, prepared.max_tokens)
        reservation = await self.admission.admit(principal, prompt_tokens + prepared.max_tokens * prepared.n,
                                                 prepared.n)
        place = self.fair.place(principal.tenant if principal else ANONYMOUS, principal.weight if principal else 1,
                                prepared.n, prepared.priority)
        prepared.submit_kwargs["priority"] = place.priority
        tally = Tally(prompt_tokens, prepared.n, spans, usage_sink, reservation, self.admission, place, self.fair)
        if self.fair.tenant_cap is not None:
            steps = self._gated(place, prepared)
        else:
            try:
                steps = await self.engine.submit(prepared)
            except BaseException:
                await tally.close()
                raise
        generation = Generation(prepared, steps, tally, self)
        self.live.add(generation)
        return generation

    async def _gated(self, place: Place, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        """The engine's steps once the tenant may enter it: the wait is part of the stream (its heartbeats go on),
        and the engine's refusal arrives as the stream's first item."""
        seqs = await self.fair.enter_engine(place)
        try:
            steps = await self.engine.submit(prepared)
            try:
                async for step in steps:
                    yield step
            finally:
                await steps.aclose()  # type: ignore[attr-defined]
        finally:
            self.fair.leave_engine(place, seqs)

    async def interrupt_all(self, reason: str) -> int:
        """Stop every running generation (shutdown's deadline); returns how many there were."""
        running = list(self.live)
        for generation in running:
            await generation.interrupt(reason)
        return len(running)
