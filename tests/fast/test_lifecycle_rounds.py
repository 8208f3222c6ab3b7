"""The lifecycle's database rounds over stand-in services (named stubs that count calls): the leading API process
reconciles and sweeps, the others only probe the database; once the database has been reachable long enough the
reconcile's own statements are the probe, and a failure of theirs makes the next rounds ping until it is settled
again."""

from __future__ import annotations

import asyncio
from typing import Any

from server.lifecycle import ApiProcess, Lifecycle

ROUND_S = 0.02  # stale_after_s of the stub: the reconciler's period is the smaller of it and 5 s


class StubConversations:
    def __init__(self, settled: bool = True, fail_reconcile: bool = False) -> None:
        self.stale_after_s = ROUND_S
        self.settled = settled
        self.fail_reconcile = fail_reconcile
        self.pings = 0
        self.reconciles = 0

    def database_settled(self) -> bool:
        return self.settled

    def database_failed(self) -> None:
        self.settled = False

    async def check_database(self) -> bool:
        self.pings += 1
        return True

    async def reconcile(self) -> int:
        self.reconciles += 1
        if self.fail_reconcile:
            raise ConnectionError("the database went away")
        return 0


class StubBackground:
    def __init__(self) -> None:
        self.reconciles = 0

    async def reconcile(self) -> int:
        self.reconciles += 1
        return 0


class StubStore:
    def __init__(self) -> None:
        self.sweeps = 0

    async def sweep(self) -> int:
        self.sweeps += 1
        return 0


class StubEngine:
    is_running = True


class StubServices:
    def __init__(self, conversations: StubConversations) -> None:
        self.engine = StubEngine()
        self.generator: Any = None
        self.conversations = conversations
        self.response_store = StubStore()
        self.background_responses = StubBackground()
        self.adapters: Any = None


async def rounds(lifecycle: Lifecycle, services: StubServices) -> None:
    lifecycle.start(services)  # type: ignore[arg-type]  # stand-ins for the app's services
    await asyncio.sleep(ROUND_S * 10)
    await lifecycle.stop()


def test_the_first_api_process_leads() -> None:
    assert ApiProcess("server", 0).leads and not ApiProcess("server", 1).leads


async def test_a_process_that_does_not_lead_only_probes() -> None:
    services = StubServices(StubConversations())
    await rounds(Lifecycle(30.0, leads=False), services)
    assert services.conversations.pings >= 3
    assert services.conversations.reconciles == services.background_responses.reconciles == 0
    assert services.response_store.sweeps == 0


async def test_the_lead_reconciles_and_sweeps_without_a_ping_when_settled() -> None:
    services = StubServices(StubConversations())
    await rounds(Lifecycle(30.0, leads=True), services)
    assert services.conversations.reconciles >= 3 and services.background_responses.reconciles >= 3
    assert services.conversations.pings == 0 and services.response_store.sweeps == 1


async def test_the_lead_pings_until_settled_and_after_a_failed_reconcile() -> None:
    unsettled = StubServices(StubConversations(settled=False))
    await rounds(Lifecycle(30.0, leads=True), unsettled)
    assert unsettled.conversations.pings >= 3 and unsettled.conversations.reconciles == 0
    failing = StubServices(StubConversations(fail_reconcile=True))
    await rounds(Lifecycle(30.0, leads=True), failing)
    assert failing.conversations.reconciles == 1 and failing.background_responses.reconciles == 0
    assert failing.conversations.pings >= 3 and not failing.conversations.settled
