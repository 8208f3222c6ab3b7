"""Fair share between tenants in the engine's queue. vLLM's scheduler (scheduling_policy: priority) serves lower
values first, in arrival order within a value. With fairness on, a generation's value is its tenant's rank: how
many generations the tenant (a user, over all its keys and tokens) already has in flight, divided by the weight
of the key it calls with. A light tenant's request (rank 0) is thus scheduled ahead of a heavy tenant's backlog
(ranks 1, 2, ... as its requests pile up), and the heavy tenant still gets every slot nobody else asks for. The
request's own `priority` orders requests within one rank, never across tenants.

The engine never preempts a running sequence for a higher priority (only when its KV cache runs out), so when one
tenant fills every sequence slot, a light tenant's request waits for the next slot to free, and a closed-loop
flood frees them in waves. So `reserve` slots are kept free for a tenant that has none: a tenant may hold the
engine's slots less the reserve less what the other tenants hold (so a light tenant's second request finds a slot
as its first did), and never less than an even share of the slots once two or more tenants hold or wait for
some, so that floods from several tenants still fill the engine between them. A tenant's requests past that wait
here, in arrival order, and are not yet in the engine's queue."""

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
    """One tenant's sequences in the engine, and its requests waiting to enter, in arrival order."""

    def __init__(self) -> None:
        self.used = 0
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

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
        self.engine_slots = engine_slots or 0
        self.gates: dict[str, TenantGate] = {}
        self.engine_used = 0  # sequences in the engine over all tenants

    def cap(self, gate: TenantGate) -> int:
        """What the gate's tenant may hold in the engine now (see the module's docstring)."""
        assert self.tenant_cap is not None
        even_share = self.engine_slots // len(self.gates) if len(self.gates) > 1 else 0
        return max(1, even_share, self.tenant_cap - (self.engine_used - gate.used))

    async def enter_engine(self, place: Place) -> int:
        """Waits until the tenant may put this generation's sequences in the engine; returns what to give back
        with `leave_engine`."""
        if self.tenant_cap is None:
            return 0
        gate = self.gates.setdefault(place.tenant, TenantGate())
        seqs = min(place.choices, self.tenant_cap)
        if not gate.waiting and gate.used + seqs <= self.cap(gate):
            self._take(gate, seqs)
            return seqs
        entry = (seqs, asyncio.get_running_loop().create_future())
        gate.waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.leave_engine(place, seqs)  # granted, then cancelled before it could use the slots
            else:
                gate.waiting.remove(entry)
                self._drop_if_idle(place.tenant, gate)
                self._admit_waiting()
            raise
        return seqs

    def leave_engine(self, place: Place, seqs: int) -> None:
        gate = self.gates.get(place.tenant)
        if gate is None or not seqs:
            return
        gate.used -= seqs
        self.engine_used -= seqs
        self._drop_if_idle(place.tenant, gate)
        self._admit_waiting()

    def _take(self, gate: TenantGate, seqs: int) -> None:
        gate.used += seqs
        self.engine_used += seqs

    def _drop_if_idle(self, tenant: str, gate: TenantGate) -> None:
        if gate.idle:
            del self.gates[tenant]

    def _admit_waiting(self) -> None:
        """A slot given back may let any tenant's next request in (each one's cap depends on the others')."""
        for gate in list(self.gates.values()):
            while gate.waiting and gate.used + gate.waiting[0][0] <= self.cap(gate):
                granted, future = gate.waiting.popleft()
                if not future.done():
                    self._take(gate, granted)
                    future.set_result(None)

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
