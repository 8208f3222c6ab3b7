"""CodeFace servers in processes of their own (`codeface serve`), for tests that need a profile of their own or
that break the server: kill it, stop it, kill its engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300
_STOPPING: list[threading.Thread] = []
# What a failing test's report shows of each running server's log: CI keeps only pytest's output, not the logs.
REPORTED_LOG_LINES = 25
REPORTED_LINE_CHARS = 400
START_FAILURE_LOG_LINES = 40
WORTH_REPORTING = ('"level": "WARNING"', '"level": "ERROR"', '"level": "CRITICAL"', " ERROR ", "Traceback")


class SpawnedServer:
    def __init__(self, port: int, log_path: Path, *, database_url: str, settings: dict[str, object],
                 env: dict[str, str] | None = None, config: Path = ROOT / "configs/cpu.yaml") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.database_url = database_url
        self.settings = settings
        self.extra_env = env
        self.config = config
        sets = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
        self.command = [sys.executable, "-m", "server", "serve", "--config", str(config), "--port", str(port), *sets]
        self.env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, probe: str = "/readyz") -> SpawnedServer:
        return self.launch().ready(probe)

    def again(self) -> SpawnedServer:
        """The same server (command, port, database, log) to start again, as a supervisor restarts one that died."""
        return SpawnedServer(self.port, self.log_path, database_url=self.database_url, settings=self.settings,
                             env=self.extra_env, config=self.config)

    def launch(self) -> SpawnedServer:
        with open(self.log_path, "ab") as log:
            # A session of its own: stop() and the fault tests signal the server and its engine core together.
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        REPORTS[self.report_title] = self.warnings_tail
        return self

    def ready(self, probe: str = "/readyz") -> SpawnedServer:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + probe, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server was not ready in {START_TIMEOUT_S} s: {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """The server and its engine processes together, as a container runtime or systemd kills a service."""
        os.killpg(self.pid, signum)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop_soon(self) -> None:
        """SIGTERM now; the rest of stop() (the wait, then SIGKILL to what is left) in a thread that
        `finish_stopping` joins at the end of the session: a fixture's teardown need not wait for the engine to
        shut down (about 5 s) before the next module starts."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
        stopping = threading.Thread(target=self.stop, name=f"stop-{self.port}")
        stopping.start()
        _STOPPING.append(stopping)

    @property
    def report_title(self) -> str:
        return f"server log on port {self.port}: warnings and errors"

    def stop(self) -> None:
        REPORTS.pop(self.report_title, None)
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        # The engine processes of a server that was killed alone outlive it: end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log_tail(self) -> str:
        """Its log's last lines, whole: why it did not start."""
        return log_tail(self.log_path, lines=START_FAILURE_LOG_LINES, width=None)

    def warnings_tail(self) -> str:
        """The last warnings and errors it logged."""
        return log_tail(self.log_path, WORTH_REPORTING)


def log_tail(path: Path, marks: Iterable[str] = (), *, lines: int = REPORTED_LOG_LINES,
             width: int | None = REPORTED_LINE_CHARS) -> str:
    """A log's last `lines` (those with one of `marks`, if any are given), each cut to `width` characters."""
    text = path.read_text(errors="replace") if path.exists() else ""
    wanted = tuple(marks)
    found = [line[:width] for line in text.splitlines() if not wanted or any(mark in line for mark in wanted)]
    return "\n".join(found[-lines:]) or "(nothing)"


# What a failing test's report shows, by title: the logs of the servers and services running in processes of their
# own (tests/conftest.py adds them to the report).
REPORTS: dict[str, Callable[[], str]] = {}


def finish_stopping() -> None:
    for stopping in _STOPPING:
        stopping.join()
    _STOPPING.clear()


Plan = Callable[[pytest.FixtureRequest], SpawnedServer]


class EarlyStarts:
    """Servers that later modules need, launched ahead of them while the fault group's Postgres outages leave the
    machine mostly idle (tests/faults/test_services_down_load_and_drain.py calls launch_all). A server takes half a
    minute to start (three processes importing torch and vLLM, the engine's warm-up): launched early, the wait
    overlaps those outages instead of adding to the run. Each plan is named after the fixture that takes its server;
    a fixture whose server was not launched early (a run of one file, or -k) starts it there and then."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.launched: dict[str, SpawnedServer] = {}

    def plan(self, fixture: str, build: Plan) -> None:
        """`build` makes the server (not yet launched) from session-scoped fixtures only."""
        self.plans[fixture] = build

    def fixture(self, name: str, build: Plan) -> Any:
        """Plans `build` under `name`; returns the module-scoped fixture of that name, which takes its server (for
        a module to bind to that name)."""
        self.plan(name, build)

        @pytest.fixture(scope="module", name=name)
        def server(request: pytest.FixtureRequest) -> Iterator[SpawnedServer]:
            with self.taken(name, request) as taken:
                yield taken

        return server

    def keep_only(self, fixtures: Iterable[str]) -> None:
        """Forget the plans whose fixture no collected test uses."""
        needed = set(fixtures)
        self.plans = {name: build for name, build in self.plans.items() if name in needed}

    def launch_all(self, request: pytest.FixtureRequest) -> None:
        for name, build in self.plans.items():
            if name not in self.launched:
                self.launched[name] = build(request).launch()

    def take(self, fixture: str, request: pytest.FixtureRequest) -> SpawnedServer:
        server = self.launched.pop(fixture, None)
        if server is None:
            server = self.plans[fixture](request).launch()
        return server.ready()

    @contextlib.contextmanager
    def taken(self, fixture: str, request: pytest.FixtureRequest) -> Iterator[SpawnedServer]:
        """A fixture's server for as long as the fixture lasts; stopped without waiting afterwards."""
        server = self.take(fixture, request)
        try:
            yield server
        finally:
            server.stop_soon()

    def stop_untaken(self) -> None:
        for server in self.launched.values():
            server.stop_soon()
        self.launched.clear()


EARLY = EarlyStarts()


SLOT_HOLD = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500,
             "ignore_eos": True, "stream": True}


class SlotHolder:
    """Holds the one sequence slot of an engine run with max_num_seqs=1: a long stream, started and seen to
    produce a token, then closed by `release` (closing the stream aborts it), so that requests sent in between
    queue behind it whatever the CPU's speed."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> None:
        self.http = http
        self.headers = headers or {}
        self.generating = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def hold(self) -> None:
        self.task = asyncio.create_task(self._stream())
        await asyncio.wait_for(self.generating.wait(), START_TIMEOUT_S)

    async def _stream(self) -> None:
        async with self.http.stream("POST", "/v1/chat/completions", json=SLOT_HOLD,
                                    headers=self.headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    self.generating.set()

    async def release(self) -> None:
        assert self.task is not None and not self.task.done(), "the slot was free before release: hold longer"
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
