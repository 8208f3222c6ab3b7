"""The fault group's own real services, so that breaking them touches nothing else: a Postgres cluster (initdb'd in
a temp folder, run as the postgres user) and a Redis, each on a free port, that the tests stop, pause (SIGSTOP:
connections accepted, never answered), resume and restart; and CodeFace servers in processes of their own."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from loadtests.sse import aiter_events

from conftest import IN_CI, free_port, unavailable, user_with_key
from servers import REPORTS, SpawnedServer, log_tail

READY_TIMEOUT_S = 30
SECRET = "fault-tests-secret-key-0123456789abcdefghij"
# What the fault tests measured this run (RELIABILITY.md's last column): printed at the end of the run.
MEASURED: dict[str, str] = {}


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    def record(what: str, value: object) -> None:
        MEASURED[f"{request.node.name}: {what}"] = str(value)
        request.node.user_properties.append((what, value))
    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("fault group: measured")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what} = {value}")


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        unavailable(f"no {name}: install Debian's postgresql package")
    return found[-1]


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise TimeoutError(what)


class OwnPostgres:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/codeface"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postgres")
        self._as_postgres(postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        # Connections logged with millisecond times: a failing test's report shows when Postgres saw the last ones
        # (a replica's first connection once timed out in CI with nothing else to go on).
        self._as_postgres(postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                          "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                          "-c log_connections=on -c log_line_prefix='%m [%p] '", "start")

    def stop(self) -> None:
        self._as_postgres(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
            await connection.execute("CREATE DATABASE codeface")
            await connection.close()

        asyncio.run(create())

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def children(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.postmaster())], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    def pause(self) -> None:
        """Connections are accepted by the kernel and never answered. The postmaster stops first, so that it
        forks no backend after its children are listed."""
        os.kill(self.postmaster(), signal.SIGSTOP)
        for pid in self.children():
            with contextlib.suppress(ProcessLookupError):  # exited since it was listed
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Children first: a backend forked just before the pause (not stopped) may have exited meanwhile, and the
        postmaster, once running, reaps it; a child gone is not one to resume."""
        for pid in self.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.kill(self.postmaster(), signal.SIGCONT)

    @contextlib.contextmanager
    def broken(self, fault: str) -> Iterator[None]:
        """Stopped or hung for the block, and always restored after it: a failing test must not leave the
        module's later tests a broken database."""
        self.stop() if fault == "stop" else self.pause()
        try:
            yield
        finally:
            self.start() if fault == "stop" else self.resume()


class OwnRedis:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.folder / "redis.log"
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, READY_TIMEOUT_S, "redis did not start")

    def answers(self) -> bool:
        """PONG; a Redis that exited (it could not listen) fails at once, with what it logged."""
        if self.process is not None and self.process.poll() is not None:
            log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited ({self.process.returncode}):\n{log}")
        try:
            return self.cli("ping") == "PONG"
        except subprocess.TimeoutExpired:
            return False  # a busy machine: asked again until READY_TIMEOUT_S

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=5).stdout.strip()

    def restart(self, *, keep_data: bool = False) -> None:
        """A restart loses everything it held (no persistence), as a crashed Redis does; with `keep_data`, what it
        held is saved first and loaded again (a Redis with persistence), so that a test can see what was changed
        and what was not across the restart."""
        self.stop(keep_data=keep_data)
        self.start()

    def stop(self, *, keep_data: bool = False) -> None:
        """Killed: connections are refused until `start`. With `keep_data`, the next start loads what it held."""
        if keep_data:
            assert self.cli("SAVE") == "OK"
        else:
            (self.folder / "dump.rdb").unlink(missing_ok=True)
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    if shutil.which("runuser") is None and os.geteuid() == 0:
        unavailable("runuser is needed to run Postgres as the postgres user")
    # Not under pytest's temp folder: the postgres user could not reach into it.
    folder = Path(tempfile.mkdtemp(prefix="codeface-postgres-"))
    database = OwnPostgres(folder)
    database.start()
    database.create_database()
    REPORTS["the fault group's Postgres log"] = partial(log_tail, folder / "log")
    try:
        yield database
    finally:
        REPORTS.pop("the fault group's Postgres log", None)
        with contextlib.suppress(OSError, ValueError):
            database.resume()
        with contextlib.suppress(subprocess.SubprocessError):
            database.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        unavailable("no redis-server")
    redis = OwnRedis(tmp_path_factory.mktemp("own-redis"))
    redis.start()
    REPORTS["the fault group's Redis log"] = partial(log_tail, redis.folder / "redis.log")
    try:
        yield redis
    finally:
        REPORTS.pop("the fault group's Redis log", None)
        with contextlib.suppress(AssertionError, OSError):
            redis.resume()
        redis.stop()


def spawn(folder: Path, database_url: str, redis_url: str, **settings: object) -> SpawnedServer:
    """A CodeFace server in a process (and session) of its own: auth on, limits in the given Redis."""
    from storage import upgrade_database

    upgrade_database(database_url)
    values: dict[str, object] = {"auth_enabled": "true", "rate_limit_storage": redis_url,
                                 "conversation_grace_s": 30, "kv_cache_space_gib": 1, "metrics_public": True,
                                 **settings}
    return SpawnedServer(free_port(), folder / "server.log", database_url=database_url, settings=values,
                         env={"SECRET_KEY": SECRET})


def admin_key(database_url: str, redis_url: str) -> str:
    """An admin with an unlimited key."""
    import uuid

    from server.settings import load_settings

    settings = load_settings(None, database_url=database_url, rate_limit_storage=redis_url, secret_key=SECRET)
    return user_with_key(settings, f"admin-{uuid.uuid4().hex[:6]}", is_admin=True)


@pytest.fixture
def spawn_frontend() -> Iterator[Callable[..., str]]:
    """Replicas without the engine in processes of their own (tests/frontend_process.py); returns their URLs."""
    started: list[subprocess.Popen[bytes]] = []

    def start(database_url: str, redis_url: str, **overrides: object) -> str:
        port = free_port()
        script = Path(__file__).resolve().parent.parent / "frontend_process.py"
        started.append(subprocess.Popen([sys.executable, str(script), str(port), database_url, redis_url,
                                         json.dumps(overrides)]))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/healthz"), READY_TIMEOUT_S, f"the replica on {url} did not start")
        # Ready as a balancer would see it: its database answers (its first connection opened before the test's
        # first request, as a replica's own start opens it; the engine-less replica's readiness names its engine).
        wait_until(lambda: _reaches_its_database(url), READY_TIMEOUT_S, f"the replica on {url} reached no database")
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def _reaches_its_database(url: str) -> bool:
    try:
        answer = httpx.get(f"{url}/readyz", timeout=10)
    except httpx.TransportError:
        return False
    return answer.status_code == 200 or "database" not in answer.json()["error"]["message"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def readyz(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code
    except httpx.TransportError:
        return 0


__all__ = ["IN_CI", "OwnPostgres", "OwnRedis", "admin_key", "long_chat", "readyz", "spawn", "wait_until"]


async def long_chat(http: httpx.AsyncClient, started: asyncio.Event) -> str:
    """A long chat stream: "finished" if it ended with a finish reason then [DONE], "error" if an error event did."""
    body = {"messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    outcome = "cut"
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for event in aiter_events(response.aiter_lines()):
            if event.done:
                return outcome
            data = json.loads(event.data)
            if "error" in data:
                outcome = "error"
            elif data["choices"]:
                started.set()
                if data["choices"][0].get("finish_reason"):
                    outcome = "finished"
    return outcome
