"""The one generation path, whatever the route: admission control, the caller's token budget and stream slot, the
engine stream, and a tally of what came out, settled once when the generation ends however it ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio

from engine import ChatEngine, PreparedRequest, StepOutput
from server.exceptions import Overloaded
from server.security.auth import Principal
from server.security.ratelimit import LimitExceeded, RateLimits, Reservation
from server.telemetry.metrics import admission_rejections, rate_limit_rejections
from server.telemetry.tracing import GenerationSpans

ADMISSION_RETRY_AFTER_S = 1
ABORTED = "abort"


class Admission:
    """Global admission control, then the caller's limits: what every generation passes before the engine sees it."""

    def __init__(self, engine: ChatEngine, limits: RateLimits, max_inflight: int) -> None:
        self.engine = engine
        self.limits = limits
        self.max_inflight = max_inflight

    async def admit(self, principal: Principal | None, tokens: int) -> Reservation | None:
        """Raises Overloaded (server full), LimitExceeded or LimiterUnavailable (the caller's limits)."""
        if self.engine.requests_in_flight >= self.max_inflight:
            admission_rejections.labels(self.engine.model_name).inc()
            raise Overloaded(f"the server is at capacity ({self.max_inflight} generations in flight); retry shortly",
                             retry_after_s=ADMISSION_RETRY_AFTER_S)
        if principal is None:
            return None
        try:
            return await self.limits.reserve(principal.subject, principal.quota, tokens)
        except LimitExceeded as exc:
            rate_limit_rejections.labels(self.engine.model_name, exc.limit).inc()
            raise


class Tally:
    """What one generation produced so far: token counts and finish reasons, for the response, the access log,
    the span attributes, the metrics and the caller's token budget."""

    def __init__(self, prompt_tokens: int, n: int, spans: GenerationSpans, usage_sink: MutableMapping[str, Any],
                 reservation: Reservation | None) -> None:
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.cached_tokens: int | None = None
        self.completion_tokens = 0
        self.finish_reasons: list[str | None] = [None] * n
        self.spans = spans
        self.usage_sink = usage_sink
        self.reservation = reservation
        self.closed = False

    def add(self, step: StepOutput) -> None:
        if self.completion_tokens == 0:
            self.spans.first_token()
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
        # Added up: one request may run several generations (a completion with several prompts).
        used = self.usage_sink.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
        used["prompt_tokens"] += self.prompt_tokens
        used["completion_tokens"] += self.completion_tokens
        self.spans.finish(self.prompt_tokens, self.completion_tokens, [r or ABORTED for r in self.finish_reasons])
        if self.reservation is not None:
            # Shielded: a cancelled request (client gone) would otherwise have this await cancelled too.
            with anyio.CancelScope(shield=True):
                await self.reservation.settle(self.prompt_tokens + self.completion_tokens)


class Generation:
    """One admitted generation. Iterate it for the engine's steps (tallied as they pass); `close` ends it in the
    engine if it is still running and settles its budget, once."""

    def __init__(self, prepared: PreparedRequest, steps: AsyncIterator[StepOutput], tally: Tally) -> None:
        self.prepared = prepared
        self._steps = steps
        self.tally = tally

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        async for step in self._steps:
            self.tally.add(step)
            yield step

    async def close(self) -> None:
        await self._steps.aclose()  # type: ignore[attr-defined]
        await self.tally.close()


class Generator:
    """Starts generations of prepared (rendered, checked) requests: admission and limits let one in, then the
    engine takes it."""

    def __init__(self, engine: ChatEngine, admission: Admission) -> None:
        self.engine = engine
        self.admission = admission

    async def start(self, principal: Principal | None, prepared: PreparedRequest, *,
                    usage_sink: MutableMapping[str, Any]) -> Generation:
        """Raises admission's errors, then the engine's (InvalidRequestError, EngineUnavailableError) if it refuses
        the request: all before a byte of the response is sent."""
        prompt_tokens = prepared.prompt.num_tokens
        spans = GenerationSpans(self.engine.model_name, prepared.request_id, prepared.max_tokens)
        reservation = await self.admission.admit(principal, prompt_tokens + prepared.max_tokens * prepared.n)
        tally = Tally(prompt_tokens, prepared.n, spans, usage_sink, reservation)
        try:
            steps = await self.engine.submit(prepared)
        except BaseException:
            await tally.close()
            raise
        return Generation(prepared, steps, tally)
