"""The one generation path, whatever the route: admission control, the caller's token budget and stream slot, the
engine stream, and a tally of what came out, settled once when the generation ends however it ends."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio

from engine import (
    EngineClient,
    EngineUnavailableError,
    GenerationFailedError,
    InvalidRequestError,
    PreparedRequest,
    StepOutput,
)
from server.exceptions import InvalidRequest, Overloaded, RateLimited, Unavailable
from server.generation.fairness import ANONYMOUS, FairShare, Place
from server.generation.slo import SloAdmission, Ticket
from server.security.auth import Principal
from server.security.ratelimit import Limit, LimitExceeded, RateLimits, Reservation, Sequences, too_many_sequences
from server.telemetry.metrics import (
    admission_rejections,
    model_generation_tokens,
    model_generations,
    model_prompt_tokens,
    model_ttft,
    rate_limit_rejections,
    slo_refusals,
    slo_ttft_estimate,
    slo_ttft_ratio,
    tenant_queue_time,
    tenant_share_class,
    tenant_ttft,
)
from server.telemetry.tracing import GenerationSpans

ADMISSION_RETRY_AFTER_S = 1
# Log probabilities one request may ask for in all (prompts x choices x tokens x alternatives): each one is an object
# in the answer, so this bounds its memory (about 200 bytes each).
MAX_LOGPROB_ENTRIES = 200_000
ABORTED = "abort"


def logprob_entries(prepared: PreparedRequest) -> tuple[int, int]:
    """The sampled and the prompt log probabilities one generation asks for."""
    sampled = prepared.n * prepared.max_tokens * (prepared.logprobs + 1) if prepared.logprobs is not None else 0
    prompt = (prepared.prompt.num_tokens * (prepared.prompt_logprobs + 1)
              if prepared.prompt_logprobs is not None and prepared.prompt_logprobs >= 0 else 0)
    return sampled, prompt


class LogprobBudget:
    """The log probabilities of one request, over all its generations: `charge` each before any is started.
    `fields` names what the caller may lower, `param` the field the refusal names."""

    def __init__(self, param: str, fields: str, limit: int = MAX_LOGPROB_ENTRIES) -> None:
        self.param = param
        self.fields = fields
        self.limit = limit
        self.sampled = 0
        self.prompt = 0

    def charge(self, prepared: PreparedRequest) -> None:
        sampled, prompt = logprob_entries(prepared)
        self.sampled += sampled
        self.prompt += prompt
        if self.sampled + self.prompt > self.limit:
            raise InvalidRequest(f"this request asks for at least {self.sampled + self.prompt} log probabilities "
                                 f"(prompts x choices x tokens x alternatives), more than {self.limit} in one "
                                 f"request; lower {self.fields}",
                                 param=self.param if self.sampled >= self.prompt else "prompt_logprobs")


class Admission:
    """Global admission control, then the caller's limits: what every generation passes before the engine sees it.

    Sequences (a generation counts n) are counted here from the moment they are admitted (the engine counts a
    request only once it has been submitted, so a burst checked against the engine's count alone would all pass
    together). One tenant (a user, over all its keys) may hold at most `max_per_tenant` of them, so that no user
    fills admission for the others; unauthenticated callers (auth off) are not capped. With `server_id` (several API
    processes over one engine) that share is also counted in the limits' shared storage under that id, where every
    process's sequences add up, in the same call as the caller's limits. With `slo`, a generation
    that would miss its latency budgets is refused too (server.generation.slo), and each admitted one is followed
    (a Ticket) to measure the rates the estimate uses."""

    def __init__(self, engine: EngineClient, limits: RateLimits, *, max_inflight: int,
                 max_per_tenant: int | None = None, slo: SloAdmission | None = None,
                 server_id: str | None = None) -> None:
        self.engine = engine
        self.limits = limits
        self.max_inflight = max_inflight
        self.max_per_tenant = max_per_tenant
        self.server_id = server_id
        self.slo = slo
        self.admitted = 0
        self.by_tenant: Counter[str] = Counter()
        self.draining = False

    def check(self, principal: Principal | None, choices: int, prompt_tokens: int = 0) -> None:
        """What `admit` refuses before any limit's storage is asked, holding nothing: Unavailable (draining),
        LimitExceeded (the tenant's share of admission), Overloaded (server full, or past its latency budgets),
        RateLimited (past the budgets, and the tenant over an even share with fair share on). `prompt_tokens`: 0
        before the prompt is rendered."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica",
                              retry_after_s=ADMISSION_RETRY_AFTER_S)
        if principal is not None and self.max_per_tenant is not None:
            held = self.by_tenant[principal.tenant]
            if held + choices > self.max_per_tenant:
                rate_limit_rejections.labels(self.engine.model_name, Limit.MAX_INFLIGHT_SEQUENCES).inc()
                raise too_many_sequences(self.max_per_tenant, choices, held)
        if max(self.admitted, self.engine.requests_in_flight) + choices > self.max_inflight:
            admission_rejections.labels(self.engine.model_name).inc()
            raise Overloaded(f"the server is at capacity ({self.max_inflight} sequences in flight); retry shortly",
                             retry_after_s=ADMISSION_RETRY_AFTER_S)
        if self.slo is not None:
            tenant = tenant_of(principal)
            refusal = self.slo.verdict(tenant, prompt_tokens, choices, self.by_tenant)
            if refusal is not None:
                slo_refusals.labels(self.engine.model_name, refusal.reason,
                                    tenant_share_class(self.by_tenant.get(tenant, 0))).inc()
                error = RateLimited if refusal.over_share else Overloaded
                raise error(refusal.message(), retry_after_s=refusal.retry_after_s)

    async def admit(self, principal: Principal | None, tokens: int, choices: int,
                    prompt_tokens: int = 0) -> tuple[Reservation | None, Ticket | None]:
        """Raises what `check` raises, then LimitExceeded or LimiterUnavailable (the caller's limits). A
        successful admission is released with `release(tenant_of(principal), choices)`, its ticket (with `slo`)
        ended with `self.slo.estimator.finished`."""
        self.check(principal, choices, prompt_tokens)
        tenant = tenant_of(principal)
        self.admitted += choices
        self.by_tenant[tenant] += choices
        # Counted before any await, as `admitted` is: a burst is estimated one request after another.
        ticket = self.slo.admitted(prompt_tokens, choices) if self.slo is not None else None
        if ticket is not None and ticket.estimate_s is not None:
            slo_ttft_estimate.labels(self.engine.model_name).observe(ticket.estimate_s)
        if principal is None:
            return None, ticket
        sequences = (Sequences(f"{self.server_id}/{tenant}", self.max_per_tenant, choices)
                     if self.server_id is not None and self.max_per_tenant is not None else None)
        try:
            return await self.limits.reserve_all(principal.budgets, tokens, sequences), ticket
        except BaseException as exc:
            self.release(tenant, choices)
            if ticket is not None and self.slo is not None:
                self.slo.estimator.finished(ticket, 0)
            if isinstance(exc, LimitExceeded):
                rate_limit_rejections.labels(self.engine.model_name, exc.limit).inc()
            raise

    def release(self, tenant: str, choices: int) -> None:
        self.admitted -= choices
        self.by_tenant[tenant] -= choices
        if self.by_tenant[tenant] <= 0:
            del self.by_tenant[tenant]


def tenant_of(principal: Principal | None) -> str:
    return principal.tenant if principal is not None else ANONYMOUS


class Tally:
    """What one generation produced so far: token counts and finish reasons, for the response, the access log,
    the span attributes, the metrics and the caller's token budget."""

    def __init__(self, prompt_tokens: int, n: int, spans: GenerationSpans, usage_sink: MutableMapping[str, Any],
                 reservation: Reservation | None, admission: Admission, place: Place, fair: FairShare,
                 ticket: Ticket | None = None, model: str | None = None) -> None:
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
        self.ticket = ticket
        # The model the request named (a LoRA adapter's name, or the base model's).
        self.model = model or admission.engine.model_name
        self.closed = False
        self.first_seen = False

    def add(self, step: StepOutput) -> None:
        if not self.first_seen:
            self.first_seen = True
            self.spans.first_token()
            model, share = self.admission.engine.model_name, self.place.share_class
            ttft = time.monotonic() - self.started
            tenant_ttft.labels(model, share).observe(ttft)
            model_ttft.labels(self.model).observe(ttft)
            if step.queue_time_s is not None:
                tenant_queue_time.labels(model, share).observe(step.queue_time_s)
            slo, ticket = self.admission.slo, self.ticket
            if slo is not None and ticket is not None:
                seen = slo.estimator.first_token(ticket, step.cached_tokens)
                if ticket.estimate_s:
                    slo_ttft_ratio.labels(model).observe(seen / ticket.estimate_s)
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
        self.admission.release(self.place.tenant, len(self.finish_reasons))
        if self.admission.slo is not None and self.ticket is not None:
            self.admission.slo.estimator.finished(self.ticket, self.completion_tokens)
        self.fair.release(self.place)
        # Added up: one request may run several generations (a completion with several prompts).
        used = self.usage_sink.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
        used["prompt_tokens"] += self.prompt_tokens
        used["completion_tokens"] += self.completion_tokens
        self.spans.finish(self.prompt_tokens, self.completion_tokens, [r or ABORTED for r in self.finish_reasons])
        model_generations.labels(self.model).inc()
        model_prompt_tokens.labels(self.model).inc(self.prompt_tokens)
        model_generation_tokens.labels(self.model).inc(self.completion_tokens)
        if self.reservation is not None:
            # Shielded: a cancelled request (client gone) would otherwise have this await cancelled too.
            with anyio.CancelScope(shield=True):
                await self.reservation.settle(self.prompt_tokens + self.completion_tokens)


class Interrupted(Unavailable):
    """The server stopped this generation (it is shutting down); the client should retry elsewhere."""


# What can end a stream after its first byte (then reported in-band): the engine's failures, and the server's stop.
STREAM_ERRORS = (InvalidRequestError, EngineUnavailableError, GenerationFailedError, Interrupted)


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

    def __init__(self, engine: EngineClient, admission: Admission, fair: FairShare) -> None:
        self.engine = engine
        self.admission = admission
        self.fair = fair
        self.live: set[Generation] = set()

    async def precheck(self, principal: Principal | None, *, choices: int, min_tokens: int, priority: int) -> None:
        """Refuse, before a prompt is rendered, what `start` would refuse whatever it renders to: `choices`
        sequences and at least `min_tokens` tokens (max_tokens x choices, when the request says max_tokens). A
        request over admission or its limits thus costs no rendering. Holds nothing: `start` checks again."""
        self.fair.check(priority)
        self.admission.check(principal, choices)
        if principal is not None and min_tokens:
            try:
                await self.limits.check_tokens(principal.budgets, min_tokens)
            except LimitExceeded as exc:
                rate_limit_rejections.labels(self.engine.model_name, exc.limit).inc()
                raise

    @property
    def limits(self) -> RateLimits:
        return self.admission.limits

    async def start(self, principal: Principal | None, prepared: PreparedRequest, *,
                    usage_sink: MutableMapping[str, Any], logprobs: LogprobBudget | None = None,
                    deferred: bool = False) -> Generation:
        """Raises admission's errors, then the engine's (InvalidRequestError, EngineUnavailableError) if it refuses
        the request: all before a byte of the response is sent. `logprobs`: the request's budget, when it runs
        several generations (charged beforehand). `deferred`: the engine gets the request only when the generation
        is first iterated (a caller that stores something first), and its refusal comes as the stream's error."""
        if logprobs is None:
            LogprobBudget("top_logprobs", "n, max_tokens or top_logprobs").charge(prepared)
        self.fair.check(prepared.priority)
        prompt_tokens = prepared.prompt.num_tokens
        adapter = prepared.adapter.name if prepared.adapter is not None else None
        spans = GenerationSpans(adapter or self.engine.model_name, prepared.request_id, prepared.max_tokens,
                                adapter=adapter)
        reservation, ticket = await self.admission.admit(
            principal, prompt_tokens + prepared.max_tokens * prepared.n, prepared.n, prompt_tokens)
        place = self.fair.place(tenant_of(principal), principal.weight if principal else 1, prepared.n,
                                prepared.priority)
        prepared.submit_kwargs["priority"] = place.priority
        tally = Tally(prompt_tokens, prepared.n, spans, usage_sink, reservation, self.admission, place, self.fair,
                      ticket, model=adapter)
        if self.fair.tenant_cap is not None or deferred:
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
        """The engine's steps once the tenant may enter it (at once with no fair-share cap): the wait is part of
        the stream (its heartbeats go on), and the engine's refusal arrives as the stream's first item."""
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
