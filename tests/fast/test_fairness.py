"""The fair-share order on its own: ranks by what a tenant has in flight, weights, the request's own priority
kept within a rank, and the counts given back."""

from __future__ import annotations

import asyncio

import pytest

from server.exceptions import InvalidRequest
from server.generation.fairness import MAX_REQUEST_PRIORITY, RANK_SPAN, FairShare


def test_a_new_tenant_goes_ahead_of_a_backlog() -> None:
    fair = FairShare(enabled=True)
    heavy = [fair.place("heavy", 1, 1, 0) for _ in range(4)]
    light = fair.place("light", 1, 1, 0)
    assert [p.priority for p in heavy] == [0, RANK_SPAN, 2 * RANK_SPAN, 3 * RANK_SPAN]
    assert light.priority == 0 and light.share_class == "0" and heavy[3].share_class == "1-3"


def test_weight_divides_the_rank_and_priority_stays_within_it() -> None:
    fair = FairShare(enabled=True)
    places = [fair.place("big", 4, 1, 0) for _ in range(8)]
    assert [p.priority // RANK_SPAN for p in places] == [0, 0, 0, 0, 1, 1, 1, 1]
    urgent = fair.place("big", 4, 1, -MAX_REQUEST_PRIORITY)
    assert 2 * RANK_SPAN - RANK_SPAN // 2 < urgent.priority < 2 * RANK_SPAN  # still behind rank 1's requests


def test_release_gives_the_share_back() -> None:
    fair = FairShare(enabled=True)
    first = fair.place("t", 1, 2, 0)
    assert fair.place("t", 1, 1, 0).priority == 2 * RANK_SPAN
    fair.release(first)
    assert fair.in_flight["t"] == 1


def test_off_passes_the_request_priority_through() -> None:
    fair = FairShare(enabled=False)
    for _ in range(3):
        fair.place("heavy", 1, 1, 0)
    assert fair.place("heavy", 1, 1, 7).priority == 7
    fair.check(10 ** 6)  # any priority: vLLM's own range applies


def test_a_priority_that_would_jump_ranks_is_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        FairShare(enabled=True).check(MAX_REQUEST_PRIORITY + 1)
    assert refused.value.param == "priority"


async def test_one_tenant_leaves_a_reserve_of_engine_slots() -> None:
    fair = FairShare(enabled=True, engine_slots=16, reserve_fraction=0.05)
    assert fair.tenant_cap == 15
    heavy = [fair.place("heavy", 1, 1, 0) for _ in range(16)]
    entered = [await fair.enter_engine(place) for place in heavy[:15]]
    waiting = asyncio.create_task(fair.enter_engine(heavy[15]))
    await asyncio.sleep(0)
    assert not waiting.done()  # the 16th slot stays free for someone else
    light = fair.place("light", 1, 1, 0)
    assert await fair.enter_engine(light) == 1
    fair.leave_engine(heavy[0], entered[0])
    await asyncio.sleep(0)
    assert not waiting.done()  # while the light tenant holds one, a slot stays free beside it
    fair.leave_engine(light, 1)
    assert await asyncio.wait_for(waiting, 1) == 1  # the next heavy request goes in once nobody else holds one


async def test_a_light_tenants_next_request_finds_a_free_slot() -> None:
    """The noisy neighbour at 8 slots: with one slot reserved only for a tenant holding none, the light tenant's
    second request (its first still running) waited for a heavy sequence to finish; now the heavy tenant's share
    shrinks by what the others hold, so the free slot is there again once the heavy one has given one back."""
    fair = FairShare(enabled=True, engine_slots=8, reserve_fraction=0.05)
    heavy = [fair.place("heavy", 1, 1, 0) for _ in range(9)]
    entered = [await fair.enter_engine(place) for place in heavy[:7]]
    assert await fair.enter_engine(fair.place("light", 1, 1, 0)) == 1
    fair.leave_engine(heavy[0], entered[0])
    refill = asyncio.create_task(fair.enter_engine(heavy[7]))
    await asyncio.sleep(0)
    assert not refill.done() and fair.engine_used == 7
    assert await asyncio.wait_for(fair.enter_engine(fair.place("light", 1, 1, 0)), 1) == 1
    refill.cancel()
    await asyncio.gather(refill, return_exceptions=True)


async def test_floods_from_several_tenants_fill_the_engine_between_them() -> None:
    """An even share of the slots is always allowed once two tenants ask, so two floods use every slot, half each
    (the second one's share waits in the engine's queue, ahead of the first one's excess, until slots free)."""
    fair = FairShare(enabled=True, engine_slots=8, reserve_fraction=0.05)
    a = [await fair.enter_engine(fair.place("a", 1, 1, 0)) for _ in range(7)]
    b = [asyncio.create_task(fair.enter_engine(fair.place("b", 1, 1, 0))) for _ in range(5)]
    await asyncio.sleep(0)
    assert [task.done() for task in b] == [True, True, True, True, False]
    for _ in range(3):
        fair.leave_engine(fair.place("a", 1, 1, 0), a.pop())
    await asyncio.sleep(0)
    assert not b[4].done() and fair.engine_used == 8
    assert fair.cap(fair.gates["a"]) == 4 and fair.cap(fair.gates["b"]) == 4
    b[4].cancel()
    await asyncio.gather(b[4], return_exceptions=True)


async def test_a_cancelled_wait_gives_nothing_away() -> None:
    fair = FairShare(enabled=True, engine_slots=2, reserve_fraction=0.05)
    first = fair.place("t", 1, 1, 0)
    seqs = await fair.enter_engine(first)
    waiting = asyncio.create_task(fair.enter_engine(fair.place("t", 1, 1, 0)))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    fair.leave_engine(first, seqs)
    assert fair.gates == {}


def test_no_reserve_when_off_or_unknown() -> None:
    assert FairShare(enabled=False, engine_slots=16, reserve_fraction=0.05).tenant_cap is None
    assert FairShare(enabled=True, engine_slots=None, reserve_fraction=0.05).tenant_cap is None
    assert FairShare(enabled=True, engine_slots=256, reserve_fraction=0.05).tenant_cap == 243
