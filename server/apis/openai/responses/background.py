"""Background responses (OpenAI's `background: true`): the row is committed queued, then the generation runs as a
Run of the Registry that no grace clock cancels, its semantic events buffered with their sequence numbers (event id
= sequence_number + 1) and shared like reply events; a writer keeps the row's body and heartbeat fresh and stores
the end whatever happens. Any replica resumes the stream (starting_after) or cancels it; a dead replica's rows are
reconciled incomplete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from server.apis.openai.responses.ids import response_id
from server.apis.openai.responses.output import Event, OutputBuilder
from server.apis.openai.responses.protocol import ResponsesRequest
from server.apis.openai.responses.serving import RUNNING, Responses, StartedResponse
from server.apis.openai.responses.state import RESPONSE_ID_PREFIX
from server.apis.openai.responses.store import INTERRUPTED, PreparedInputs, ResponseStore, prepare_inputs
from server.conversations.listeners import Listener
from server.conversations.registry import Registry
from server.conversations.run import ResumeGap, Run
from server.conversations.service import MIRROR_CATCH_UP_S, REMOTE_STORE_POLL_S, REMOTE_STORE_WAIT_S, Following
from server.conversations.writer import FallbackOnRefusal, FinalWrites, Flusher, store_until_taken
from server.exceptions import Conflict, InvalidRequest, Unavailable
from server.generation.generator import STREAM_ERRORS, Interrupted
from server.security.auth import Principal
from server.sse import EventStream, frame

logger = logging.getLogger(__name__)

QUEUED = "queued"
IN_PROGRESS = "in_progress"
CANCELLED = "cancelled"
FAILED = "failed"
INCOMPLETE = "incomplete"
STORE_RETRY_AFTER_S = 1
# The event that ends a cancelled response's stream: OpenAI's API names none (its streams end with completed,
# incomplete or failed); the Response it carries has status cancelled.
CANCELLED_EVENT = "response.cancelled"


def run_id(wire_id: str) -> uuid.UUID:
    """The Run (and shared stream) of a response: its wire id's 32 hex digits."""
    return uuid.UUID(hex=wire_id.removeprefix(RESPONSE_ID_PREFIX))


def wire_id(run: Run) -> str:
    return RESPONSE_ID_PREFIX + run.message_id.hex


def framed(name: str, data: dict[str, Any]) -> Callable[[int], bytes]:
    """An event as Run.publish_built frames it: its sequence_number is its event id less one."""
    return lambda event_id: frame({"type": name, **data, "sequence_number": event_id - 1}, event=name)


def after_id(starting_after: int | None) -> int:
    """The event id after which a resume starts: events after sequence number N are those after id N + 1."""
    return 0 if starting_after is None else starting_after + 1


def replayed(body: dict[str, Any], last_sequence: int | None, starting_after: int | None) -> list[bytes]:
    """A finished response whose events are no longer held (evicted, or another replica's without shared streams),
    from storage: its terminal event alone, carrying the stored body under the sequence number it had when it was
    streamed, so that a client never sees a number it saw as another event. Nothing after the terminal event; a
    response whose end was never streamed (reconciled after its replica died) replays only to a client that saw
    nothing of it (no starting_after), numbered 0."""
    name = f"response.{body['status']}" if body["status"] != CANCELLED else CANCELLED_EVENT
    if last_sequence is None:
        if starting_after is not None:
            raise Conflict("this response's replica stopped before its end was streamed: its events are lost; "
                           "retrieve it without stream", param="starting_after")
        return [framed(name, {"response": body})(1)]
    if starting_after is not None and starting_after > last_sequence:
        raise InvalidRequest(f"starting_after {starting_after} is past the last event ({last_sequence})",
                             param="starting_after")
    if starting_after == last_sequence:
        return []
    return [framed(name, {"response": body})(last_sequence + 1)]


async def _chunks(chunks: list[bytes]) -> EventStream:
    for chunk in chunks:
        yield chunk


@dataclass(slots=True)
class Created:
    run: Run
    body: dict[str, Any]


@dataclass(slots=True)
class Ending:
    """How a background generation ended, before its final body is built."""

    status: str
    error: Exception | None = None
    reason: str | None = None


class BackgroundResponses:
    def __init__(self, responses: Responses, store: ResponseStore, registry: Registry, *, flush_s: float,
                 heartbeat_s: float, store_timeout_s: float, stale_after_s: float,
                 database_settled: Callable[[], bool]) -> None:
        self.responses = responses
        self.store = store
        self.registry = registry
        self.flush_s = flush_s
        self.heartbeat_s = heartbeat_s
        self.store_timeout_s = store_timeout_s
        self.stale_after_s = stale_after_s
        self.database_settled = database_settled
        self.final_writes = FinalWrites[str]()

    # --- create ---------------------------------------------------------------------------------------------------

    async def create(self, request: ResponsesRequest, principal: Principal, usage_sink: MutableMapping[str, Any],
                     request_id: str) -> Created:
        """Everything that refuses refuses here (as the foreground path), then the row is committed queued, then
        the generation starts in a task of its own."""
        inputs = prepare_inputs(request.input_items())
        started = await self.responses.start(request, principal, usage_sink, request_id)
        head = self.responses.body(started, QUEUED, [])
        try:
            await self.store.begin(principal.user_id, head, inputs)
        except Exception as exc:
            await started.close()
            logger.warning("background response %s: its row could not be stored (%s)", started.response_id,
                           type(exc).__name__)
            raise Unavailable("the response could not be stored; nothing was generated",
                              retry_after_s=STORE_RETRY_AFTER_S) from None
        except BaseException:
            await started.close()
            raise
        run = self.registry.new_run(run_id(started.response_id), run_id(started.response_id), principal.user_id)
        run.background = True
        self.registry.start(run, lambda run: self._produce(run, started, inputs))
        return Created(run, head)

    def listen(self, principal: Principal, run: Run) -> Following:
        """The stream of a background response just created: counted as a listener, never refused."""
        listener = self.registry.listeners.open(principal.subject, user=principal.tenant, may_idle=False,
                                                capped=False)
        return self._following(run, listener, self.registry.listen(run, 0, listener))

    def _following(self, run: Run | None, listener: Listener, events: EventStream) -> Following:
        async def close() -> None:
            self.registry.listeners.close(listener)
        return Following(run.message_id if run is not None else None, events, close)

    # --- the generation -------------------------------------------------------------------------------------------

    async def _produce(self, run: Run, started: StartedResponse, inputs: PreparedInputs) -> None:
        builder = OutputBuilder(started.request.wants_logprobs)

        def current() -> dict[str, Any]:
            return self.responses.body(started, IN_PROGRESS, builder.snapshot(), builder.reasoning_tokens)

        async def write() -> None:
            await self.store.write(current())

        flusher = Flusher(write, self.flush_s, self.heartbeat_s, f"background response {started.response_id}")
        ending = Ending(FAILED)
        try:
            await self._emit(run, [("response.created", {"response": self.responses.body(started, QUEUED, [])}),
                                   ("response.in_progress", {"response": current()})])
            flusher.touched()
            async for step in started.generation:
                events = [event for choice in step.choices for event in builder.add(choice)]
                if events:
                    await self._emit(run, events)
                    flusher.touched()
            ending = Ending(self.responses.status(started))
        except asyncio.CancelledError:
            # An explicit cancel ends it cancelled; a shutdown's (the task cancelled without one) incomplete.
            ending = Ending(CANCELLED) if run.cancel_requested else Ending(INCOMPLETE, reason=INTERRUPTED)
        except Interrupted:
            ending = Ending(INCOMPLETE, reason=INTERRUPTED)
        except Exception as exc:  # the engine refused or broke mid-response: stored failed with what there is
            if not isinstance(exc, STREAM_ERRORS):
                logger.exception("background response %s failed", started.response_id)
            ending = Ending(FAILED, error=exc)
        await self.final_writes.run(run, started.response_id,
                                    self._finish(run, started, builder, flusher, inputs, ending))

    async def _finish(self, run: Run, started: StartedResponse, builder: OutputBuilder, flusher: Flusher,
                      inputs: PreparedInputs, ending: Ending) -> None:
        try:
            await started.close()
        except Exception:  # the response's end must not depend on the engine or limits
            logger.exception("closing the generation of background response %s failed", started.response_id)
        if ending.error is not None:
            events = self.responses.failed(started, builder, ending.error)
            body = events[-1][1]["response"]
        else:
            events = builder.finish(ending.status != "completed")
            body = self.responses.body(started, ending.status, builder.output, builder.reasoning_tokens,
                                       incomplete_reason=ending.reason or "max_output_tokens")
            name = CANCELLED_EVENT if ending.status == CANCELLED else f"response.{ending.status}"
            events.append((name, {"response": body}))
        last = await self._emit(run, events, final=True)
        await flusher.stop()
        try:
            await self._store_final(started, body, inputs, last - 1)
        finally:
            run.stored.set()

    @staticmethod
    async def _emit(run: Run, events: list[Event], *, final: bool = False) -> int:
        last = run.last_id
        for index, (name, data) in enumerate(events):
            last = await run.publish_built(framed(name, data), final=final and index == len(events) - 1)
        return last

    async def _store_final(self, started: StartedResponse, body: dict[str, Any], inputs: PreparedInputs,
                           last_sequence: int) -> None:
        """As a reply's final write (store_until_taken): retried while the database does not answer; a write it
        refuses (bad data) is stored failed, without its output."""
        # A failed body without output is as bare as the fallback: a refusal of it gives up at once.
        bare = body["status"] == FAILED and not body["output"]
        refusals = FallbackOnRefusal(f"background response {started.response_id} ({body['status']})",
                                     None if bare else "stored failed", "without its output")
        failed = {**body, "status": FAILED, "output": [], "incomplete_details": None,
                  "error": {"code": "server_error", "message": "the response could not be stored"}}

        async def attempt() -> None:
            await self.store.finish(started.owner, failed if refusals.falling_back else body, inputs, last_sequence)

        await store_until_taken(attempt, refusals, timeout_s=self.store_timeout_s, what=refusals.what)

    # --- resume, cancel, reconcile --------------------------------------------------------------------------------

    async def resume(self, principal: Principal, wire: str, starting_after: int | None) -> Following:
        """The events after sequence number `starting_after` (all without it), then the live rest: from the run
        held here or mirrored from the replica generating it, else replayed from storage (see `replayed`)."""
        listener = self.registry.listeners.open(principal.subject, user=principal.tenant, may_idle=False)
        try:
            run, events = await self._resume(principal.user_id, response_id(wire), starting_after, listener)
            return self._following(run, listener, events)
        except BaseException:
            self.registry.listeners.close(listener)
            raise

    async def _resume(self, owner_id: uuid.UUID, wire: str, starting_after: int | None,
                      listener: Listener) -> tuple[Run | None, EventStream]:
        after = after_id(starting_after)
        run = await self.registry.find(run_id(wire), owner_id)
        if run is not None:
            await run.catch_up(after, MIRROR_CATCH_UP_S)
            try:
                run.check_resumable(after)
                return run, self.registry.listen(run, after, listener)
            except ResumeGap:
                pass  # what the buffer dropped is replayed from storage, once the response has ended
            except InvalidRequest:
                raise InvalidRequest(f"starting_after {starting_after} is past the last event ({run.last_id - 1})",
                                     param="starting_after") from None
        stored = await self.store.stored(owner_id, wire)
        if not stored.body.get("background"):
            raise InvalidRequest("only a background response can be streamed again; retrieve it without stream",
                                 param="stream")
        if stored.status in RUNNING:
            raise Conflict("this response is being generated by another replica and its events are not shared "
                           "here: set reply_streams_url, or retrieve it without stream", param="response_id")
        return None, _chunks(replayed(stored.body, stored.last_sequence, starting_after))

    async def cancel(self, owner_id: uuid.UUID, wire: str) -> dict[str, Any]:
        """Stops a background response (here, or through the replica generating it) and answers it as stored:
        cancelled, or as it ended if it ended first. A response that has ended is answered as it is (OpenAI: a
        second cancel is idempotent); one that is not a background response is a 400 (as OpenAI and vllm serve)."""
        stored = await self.store.stored(owner_id, wire)
        if not stored.body.get("background"):
            raise InvalidRequest("only a background response can be cancelled", param="response_id")
        if stored.status not in RUNNING:
            return stored.body
        run = await self.registry.find(run_id(wire), owner_id)
        if run is None:
            raise Conflict("this response is being generated by another replica and cancels are not shared: set "
                           "reply_streams_url", param="response_id")
        if self.registry.cancel(run) and not run.remote and run.task is not None:
            await asyncio.gather(run.task, return_exceptions=True)
        if not run.remote:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stored.wait(), REMOTE_STORE_WAIT_S)
        deadline = time.monotonic() + REMOTE_STORE_WAIT_S
        stored = await self.store.stored(owner_id, wire)
        while stored.status in RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(REMOTE_STORE_POLL_S)
            stored = await self.store.stored(owner_id, wire)
        if stored.status in RUNNING:
            raise Unavailable("the response has stopped but its final write has not landed yet; retrieve it again "
                              "shortly", retry_after_s=STORE_RETRY_AFTER_S)
        return stored.body

    async def reconcile(self) -> int:
        """Background responses left running by a replica that died (no heartbeat for stale_after_s): incomplete,
        their output as last written (ResponseStore.reconcile). The same rule as the replies' reconciler: not while
        the database has been reachable for less than stale_after_s, never this replica's own."""
        if not self.database_settled():
            return 0
        older_than = datetime.now(UTC) - timedelta(seconds=self.stale_after_s)
        own = {wire_id(run) for run in self.registry.runs.values()
               if run.background and not run.done and not run.remote} | self.final_writes.storing
        return await self.store.reconcile(older_than, own)
