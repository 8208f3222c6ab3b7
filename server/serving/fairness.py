"""Fair share between tenants in the engine's queue. vLLM's scheduler (scheduling_policy: priority) serves lower
values first, in arrival order within a value. With fairness on, a generation's value is its tenant's rank: how
many generations the tenant (a user, over all its keys and tokens) already has in flight, divided by the weight
of the key it calls with. A light tenant's request (rank 0) is thus scheduled ahead of a heavy tenant's backlog
(ranks 1, 2, ... as its requests pile up), and the heavy tenant still gets every slot nobody else asks for. The
request's own `priority` orders requests within one rank, never across tenants."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from server.exceptions import InvalidRequest
from server.telemetry.metrics import tenant_share_class

# One rank spans this many priority values; a request's own priority moves it within its rank.
RANK_SPAN = 1000
MAX_REQUEST_PRIORITY = RANK_SPAN // 2 - 1
# Unauthenticated callers (auth off) are one tenant.
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Place:
    """A generation's place in the fair order: its engine priority, its tenant's share class (a bounded metric
    label) and what to give back when it ends."""

    tenant: str
    choices: int
    priority: int
    share_class: str


class FairShare:
    """Counts each tenant's generations in flight on this replica and turns them into engine priorities."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.in_flight: Counter[str] = Counter()

    def check(self, requested: int) -> None:
        """Refuse a request priority that would reach into another rank (InvalidRequest naming the field)."""
        if self.enabled and abs(requested) > MAX_REQUEST_PRIORITY:
            raise InvalidRequest(f"priority must be between -{MAX_REQUEST_PRIORITY} and {MAX_REQUEST_PRIORITY} "
                                 "when fairness is on (it orders your own requests)", param="priority")

    def place(self, tenant: str, weight: int, choices: int, requested: int) -> Place:
        """The engine priority of a new generation with `choices` sequences; `requested` is the request's own
        priority (vLLM's meaning: lower first), checked by `check` beforehand."""
        ahead = self.in_flight[tenant]
        self.in_flight[tenant] += choices
        share_class = tenant_share_class(ahead)
        if not self.enabled:
            return Place(tenant, choices, requested, share_class)
        rank = ahead // max(weight, 1)
        return Place(tenant, choices, rank * RANK_SPAN + requested, share_class)

    def release(self, place: Place) -> None:
        self.in_flight[place.tenant] -= place.choices
        if self.in_flight[place.tenant] <= 0:
            del self.in_flight[place.tenant]
