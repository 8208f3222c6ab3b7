"""The limiter storage's failure handling without Redis: a reply that waits for a busy event loop is not a timeout,
one failure is not an outage, and a failed call that may have landed is undone."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.security.limiter_storage import BREAKER_FAILURES, GuardedStorage, bounded
from server.telemetry.metrics import StorageFailure, rate_limit_storage_failures

TIMEOUT_S = 0.2


async def answered_in(delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    return "answer"


async def test_an_answer_that_waited_for_a_busy_loop_is_taken() -> None:
    """The storage answers in 10 ms, but this process's loop is blocked for longer than the timeout (a starved or
    busy API process): the answer is there when the loop comes back, and it counts."""
    async def block_the_loop() -> None:
        time.sleep(TIMEOUT_S * 2)

    for call in (lambda: bounded(lambda: answered_in(0.01), TIMEOUT_S),
                 lambda: guarded().call(lambda: answered_in(0.01))):
        blocker = asyncio.get_running_loop().call_later(0.005, lambda: asyncio.ensure_future(block_the_loop()))
        assert await call() == "answer"
        blocker.cancel()


async def test_a_storage_that_does_not_answer_times_out() -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await bounded(lambda: answered_in(10), TIMEOUT_S)
    assert time.monotonic() - began < TIMEOUT_S + 0.1


def guarded() -> GuardedStorage:
    """A Redis storage that is never reached (the tests hand it their own operations): memory has no breaker."""
    return GuardedStorage("redis://127.0.0.1:1", fail_open=True, timeout_s=TIMEOUT_S, retry_s=60)


async def failing() -> None:
    raise ConnectionRefusedError


async def test_one_failure_does_not_open_the_breaker_but_failures_in_a_row_do() -> None:
    storage, ran = guarded(), []

    async def works() -> str:
        ran.append(1)
        return "ok"

    assert await storage.call(failing) is None
    assert await storage.call(works) == "ok"  # one failure, then a success: the storage is used
    for _ in range(BREAKER_FAILURES):
        assert await storage.call(failing) is None
    assert await storage.call(works) is None and ran == [1]  # open: skipped for retry_s


async def test_a_failed_call_that_may_have_landed_is_undone() -> None:
    storage, undone = guarded(), asyncio.Event()

    async def undo() -> None:
        undone.set()

    assert await storage.call(failing, undo=undo, undo_until=time.time() + 60) is None
    await asyncio.wait_for(undone.wait(), 5)



async def test_a_give_back_that_lands_closes_the_breaker() -> None:
    """Redis is back once a retried give-back lands: limits apply again at once, not after the breaker's wait
    (retry_s, 60 s here), during which every request would fail open unlimited."""
    storage, redis_up, landed = guarded(), False, asyncio.Event()

    async def give_back() -> None:
        if not redis_up:
            raise ConnectionRefusedError
        landed.set()

    async def works() -> str:
        return "ok"

    for _ in range(BREAKER_FAILURES):
        assert await storage.call(failing) is None
    await storage.give_back(give_back, time.time() + 60)
    assert await storage.call(works) is None  # open
    redis_up = True
    await asyncio.wait_for(landed.wait(), 5)
    assert await storage.call(works) == "ok"


def failures(reason: StorageFailure) -> float:
    return rate_limit_storage_failures.labels(reason)._value.get()  # type: ignore[attr-defined, no-any-return]


async def test_every_call_the_storage_did_not_count_is_counted_by_reason() -> None:
    """What operators see of a storage that fails (the policy then serves unlimited or answers 503): each call that
    failed, timed out or was skipped with the breaker open, and each give-back left to the background."""
    storage = guarded()
    before = {reason: failures(reason) for reason in StorageFailure}
    assert await storage.call(lambda: answered_in(10)) is None
    assert await storage.call(failing) is None  # the second in a row: the breaker opens
    assert await storage.call(lambda: answered_in(0)) is None
    await storage.give_back(lambda: answered_in(0), time.time() + 60)
    assert {reason: failures(reason) - before[reason] for reason in StorageFailure} == {
        StorageFailure.TIMEOUT: 1, StorageFailure.ERROR: 1, StorageFailure.BREAKER_OPEN: 1,
        StorageFailure.GIVE_BACK: 1}
