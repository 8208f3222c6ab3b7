"""The fair-share order on its own: ranks by what a tenant has in flight, weights, the request's own priority
kept within a rank, and the counts given back."""

from __future__ import annotations

import pytest

from server.exceptions import InvalidRequest
from server.serving.fairness import MAX_REQUEST_PRIORITY, RANK_SPAN, FairShare


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
