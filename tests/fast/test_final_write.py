"""store_until_taken, the final-write discipline of conversation replies and background responses: a database that
does not answer is retried with backoff until it takes the write (or the timeout passes), and one that refuses the
write hands it to the caller's fallback once, never retried as it was (FallbackOnRefusal); FinalWrites runs each in
a task that a cancellation of its caller does not stop, and drains them. The attempts here are fakes that fail as
the driver does."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from server.conversations import writer
from server.conversations.run import Run
from server.conversations.writer import FallbackOnRefusal, FinalWrites, store_until_taken

OUTAGE = OperationalError("UPDATE", {}, ConnectionRefusedError("connection refused"))
REFUSAL = IntegrityError("UPDATE", {}, ValueError("bad data"))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "FIRST_RETRY_S", 0.01)
    monkeypatch.setattr(writer, "MAX_RETRY_S", 0.02)


async def test_an_outage_is_retried_until_the_write_lands() -> None:
    failures = [OUTAGE, OUTAGE, OUTAGE]
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        if failures:
            raise failures.pop()

    await store_until_taken(attempt, lambda _reason: pytest.fail("an outage is not a refusal"), timeout_s=5,
                            what="fake")
    assert attempts == 4 and not failures


async def test_an_outage_past_the_timeout_gives_up() -> None:
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        raise OUTAGE

    await store_until_taken(attempt, lambda _reason: True, timeout_s=0.1, what="fake")
    assert 2 <= attempts < 20


async def test_a_refusal_goes_to_the_fallback_once() -> None:
    written: list[str] = []
    fallback = False
    reasons: list[str] = []

    async def attempt() -> None:
        if not fallback:
            raise REFUSAL
        written.append("fallback")

    def on_refused(reason: str) -> bool:
        nonlocal fallback
        reasons.append(reason)
        fallback = True
        return True

    await store_until_taken(attempt, on_refused, timeout_s=5, what="fake")
    assert written == ["fallback"] and reasons == ["bad data"]

    async def always_refused() -> None:
        raise REFUSAL

    calls: list[str] = []
    await store_until_taken(always_refused, lambda reason: calls.append(reason) is not None, timeout_s=5, what="fake")
    assert calls == ["bad data"]  # the fallback said give up: no retry of a refused write


async def test_fallback_on_refusal_falls_back_once_then_gives_up() -> None:
    written: list[str] = []
    refusals = FallbackOnRefusal("fake", "stored failed", "without its text")

    async def attempt() -> None:
        written.append("fallback" if refusals.falling_back else "as it was")
        raise REFUSAL

    await store_until_taken(attempt, refusals, timeout_s=5, what=refusals.what)
    assert written == ["as it was", "fallback"] and refusals.falling_back

    bare = FallbackOnRefusal("fake", None, "without its text")  # no fallback: the first refusal gives up
    assert bare("bad data") is False and not bare.falling_back


async def test_final_writes_outlive_their_callers_cancellation_and_drain() -> None:
    final_writes = FinalWrites[str]()
    run = Run(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    release, landed = asyncio.Event(), asyncio.Event()

    async def finish() -> None:
        await release.wait()
        landed.set()

    caller = asyncio.create_task(final_writes.run(run, "key", finish()))
    await asyncio.sleep(0)
    assert run.finishing and final_writes.storing == {"key"} and len(final_writes.pending) == 1
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await final_writes.drain(0.01)  # bounded: the write has not landed, and drain does not wait past its timeout
    assert not landed.is_set() and final_writes.storing == {"key"}
    release.set()
    await final_writes.drain(5)
    assert landed.is_set() and final_writes.storing == set() and final_writes.pending == set()
