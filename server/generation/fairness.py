"""Fair share between tenants in the engine's queue. vLLM's scheduler (scheduling_policy: priority) serves lower
values first, in arrival order within a value. With fairness on, a generation's value is its tenant's rank: how
many generations the tenant (a user, over all its keys and tokens) already has in flight, divided by the weight
of the key it calls with. A light tenant's request (rank 0) is thus scheduled ahead of a heavy tenant's backlog
(ranks 1, 2, ... as its requests pile up), and the heavy tenant still gets every slot nobody else asks for. The
request's own `priority` orders requests within one rank, never across tenants.

The engine never preempts a running sequence for a higher priority (only when its KV cache runs out), so when one
tenant fills every sequence slot, a light tenant's request waits for the next slot to free, and a closed-loop
flood frees them in waves. So one tenant may hold at most the engine's slots less a reserve in the engine at once
(its further requests wait here, in arrival order, and are not yet in the engine's queue)."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
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


class TenantGate:
    """One tenant's sequences in the engine, at most `cap`; the requests past it wait in arrival order."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def enter(self, seqs: int) -> int:
        seqs = min(seqs, self.cap)
        if not self.waiting and self.used + seqs <= self.cap:
            self.used += seqs
            return seqs
        entry = (seqs, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.leave(seqs)  # granted, then cancelled before it could use the slots
            else:
                self.waiting.remove(entry)
            raise
        return seqs

    def leave(self, seqs: int) -> None:
        self.used -= seqs
        while self.waiting and self.used + self.waiting[0][0] <= self.cap:
            granted, future = self.waiting.popleft()
            if not future.done():
                self.used += granted
                future.set_result(None)

    @property
    def idle(self) -> bool:
        return self.used == 0 and not self.waiting


class FairShare:
    """Counts each tenant's generations in flight on this replica and turns them into engine priorities; with
    `engine_slots` known, keeps `reserve` of them free of any one tenant (see the module's docstring)."""

    def __init__(self, enabled: bool, *, engine_slots: int | None = None, reserve_fraction: float = 0.0) -> None:
        self.enabled = enabled
        self.in_flight: Counter[str] = Counter()
        reserve = max(1, round((engine_slots or 0) * reserve_fraction))
        self.tenant_cap = (engine_slots - reserve if enabled and engine_slots and reserve_fraction > 0
                           and engine_slots > reserve else None)
        self.gates: dict[str, TenantGate] = {}

    async def enter_engine(self, place: Place) -> int:
        """Waits until the tenant may put this generation's sequences in the engine; returns what to give back
        with `leave_engine`."""
        if self.tenant_cap is None:
            return 0
        gate = self.gates.setdefault(place.tenant, TenantGate(self.tenant_cap))
        return await gate.enter(place.choices)

    def leave_engine(self, place: Place, seqs: int) -> None:
        gate = self.gates.get(place.tenant)
        if gate is None or not seqs:
            return
        gate.leave(seqs)
        if gate.idle:
            del self.gates[place.tenant]

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
