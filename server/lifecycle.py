"""The process around the app: a graceful drain on SIGTERM (not ready at once, new generations refused, running
ones finished or interrupted by the deadline, replies stored, then exit), an engine watchdog (a dead engine makes
the process not ready and exit non-zero, so that its supervisor restarts it), the reconciler of replies that a
dead replica left in progress and the sweep of stored responses past their retention (in one API process of a
server: the others only follow whether the database is reachable), the LoRA adapters other replicas loaded or
unloaded, and the event loop's lag sampler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from server.conversations.service import ConversationService
from server.generation.generator import Generator
from server.telemetry.loop_lag import watch_loop_lag

logger = logging.getLogger("codeface")

SHUTTING_DOWN = "the server is shutting down; retry on another replica"
WATCH_ENGINE_S = 0.5
# After the engine dies, how long in-flight streams get to send their error events before the process exits.
ENGINE_DEATH_GRACE_S = 2.0
INTERRUPT_GRACE_S = 3.0
RECONCILE_EVERY_S = 5.0
# Stored responses past their retention are deleted this often (by every replica: a batch deleted twice is a no-op).
SWEEP_EVERY_S = 300.0
POLL_S = 0.1
ENGINE_DIED_EXIT_CODE = 1


@dataclass(frozen=True, slots=True)
class ApiProcess:
    """Which of a server's API processes this is (server.api_processes): `server_id` is shared by them and new at
    each start; the first (index 0) runs what one process does for the whole server."""

    server_id: str
    index: int

    @property
    def leads(self) -> bool:
        return self.index == 0


class Watched(Protocol):
    """What the lifecycle watches of the engine."""

    @property
    def is_running(self) -> bool: ...


class Swept(Protocol):
    """What holds rows with an expiry: deletes those past it, a bounded number per call."""

    async def sweep(self) -> int: ...


class Drained(Protocol):
    """Final writes still running, waited for at shutdown (FinalWrites)."""

    async def drain(self, timeout_s: float) -> None: ...


class Background(Protocol):
    """Background responses: reconciled as replies are, and their final writes drained."""

    async def reconcile(self) -> int: ...

    @property
    def final_writes(self) -> Drained: ...


class Synced(Protocol):
    """What follows state other processes change (LoRA adapters loaded or unloaded on another replica)."""

    async def sync(self) -> None: ...


class Served(Protocol):
    """What the lifecycle drains, watches and reconciles: the app's services."""

    @property
    def engine(self) -> Watched: ...

    @property
    def generator(self) -> Generator: ...

    @property
    def conversations(self) -> ConversationService: ...

    @property
    def response_store(self) -> Swept: ...

    @property
    def background_responses(self) -> Background: ...

    @property
    def adapters(self) -> Synced: ...


class Lifecycle:
    def __init__(self, drain_timeout_s: float, adapter_sync_s: float = 0.0, *, leads: bool = True) -> None:
        self.drain_timeout_s = drain_timeout_s
        self.adapter_sync_s = adapter_sync_s
        # Reconciles and sweeps: the one process of its server that does (every replica has one).
        self.leads = leads
        self.draining = False
        self.engine_dead = False
        self.exit_code = 0
        # Set by whoever runs the server (the CLI's uvicorn): ends the serve loop. Unset under a test harness.
        self.request_exit: Callable[[], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return not (self.draining or self.engine_dead)

    def start(self, services: Served) -> None:
        """Called from the app's startup: the watchdog and the reconciler."""
        self.loop = asyncio.get_running_loop()
        self._spawn(self._watch_engine(services))
        self._spawn(watch_loop_lag())
        self._spawn(self._reconcile(services))
        if self.leads:
            self._spawn(self._sweep(services.response_store))
        if self.adapter_sync_s > 0:
            self._spawn(self._sync_adapters(services.adapters))

    def begin_drain(self, services: Served) -> bool:
        """SIGTERM: start draining (thread-safe: a signal handler calls it). False if a drain already runs."""
        if self.draining or self.loop is None:
            return False
        self.draining = True
        self.loop.call_soon_threadsafe(lambda: self._spawn(self._drain(services)))
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, services: Served) -> None:
        started = time.monotonic()
        admission = services.generator.admission
        admission.draining = True
        logger.info("draining: %d generation(s) in flight, %.0f s to finish", admission.admitted,
                    self.drain_timeout_s)
        deadline = started + self.drain_timeout_s
        while admission.admitted > 0 and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        if admission.admitted > 0:
            interrupted = await services.generator.interrupt_all(SHUTTING_DOWN)
            logger.warning("drain deadline: interrupted %d generation(s)", interrupted)
            grace = time.monotonic() + INTERRUPT_GRACE_S
            while admission.admitted > 0 and time.monotonic() < grace:
                await asyncio.sleep(POLL_S)
        await services.conversations.writer.final_writes.drain(max(1.0, deadline - time.monotonic()))
        await services.background_responses.final_writes.drain(max(1.0, deadline - time.monotonic()))
        logger.info("drained in %.1f s; exiting", time.monotonic() - started)
        self._exit()

    async def _watch_engine(self, services: Served) -> None:
        while True:
            await asyncio.sleep(WATCH_ENGINE_S)
            if not services.engine.is_running:
                break
        self.engine_dead = True
        services.generator.admission.draining = True
        logger.error("the engine has died: not ready; exiting with code %d so that a supervisor restarts the "
                     "process", ENGINE_DIED_EXIT_CODE)
        self.exit_code = ENGINE_DIED_EXIT_CODE
        await asyncio.sleep(ENGINE_DEATH_GRACE_S)  # in-flight streams send their error events meanwhile
        await services.conversations.writer.final_writes.drain(ENGINE_DEATH_GRACE_S * 5)
        await services.background_responses.final_writes.drain(ENGINE_DEATH_GRACE_S * 5)
        self._exit()

    async def _sync_adapters(self, adapters: Synced) -> None:
        while True:
            await asyncio.sleep(self.adapter_sync_s)
            try:
                await adapters.sync()
            except Exception:  # the database down, say: the next round tries again
                logger.warning("could not sync the LoRA adapters with the database", exc_info=True)

    async def _reconcile(self, services: Served) -> None:
        """Every round the database is probed: by the reconcile's own statements once it has been reachable for
        stale_after_s (a failure starts that wait again), by a ping until then and in the processes that do not
        lead. The reachability guards the reconcile a post runs on its own conversation too."""
        conversations = services.conversations
        while True:
            if self.leads and conversations.database_settled():
                try:
                    await conversations.reconcile()
                    await services.background_responses.reconcile()
                except Exception as exc:  # the database may be down; the next round retries
                    conversations.database_failed()
                    logger.warning("reconciling stale replies failed: %s", type(exc).__name__)
            else:
                await conversations.check_database()
            await asyncio.sleep(min(RECONCILE_EVERY_S, conversations.stale_after_s))

    async def _sweep(self, swept: Swept) -> None:
        while True:
            try:
                await swept.sweep()
            except Exception as exc:  # the database may be down; the next round retries
                logger.warning("sweeping expired responses failed: %s", type(exc).__name__)
            await asyncio.sleep(SWEEP_EVERY_S)

    def _exit(self) -> None:
        if self.request_exit is not None:
            self.request_exit()
