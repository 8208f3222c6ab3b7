"""Shared fixtures: one real CodeFace server (real CPU engine, real model) per test session, and real databases."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVER_START_TIMEOUT_S = 300


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where every real part must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """The real app on a real uvicorn (uvloop, httptools) and socket, in a thread of the test process, so that
    tests can read its in-memory spans. The engine core runs in its own process, as in production."""

    def __init__(self, app: object, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                log_config=None, access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="codeface-test-server", daemon=True)

    def start(self, url: str) -> None:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                pytest.fail("the test server stopped during start-up; see the log above")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the test server was not ready in {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span the test server records (tracing is on for the test server, with the SDK's in-memory exporter)."""
    from server.tracing import setup_tracing

    exporter = InMemorySpanExporter()
    setup_tracing("none", exporter=exporter)
    return exporter


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory, span_exporter: InMemorySpanExporter) -> Iterator[str]:
    """One real server for the session: CPU profile, the default model, a throwaway SQLite database."""
    from server.app import create_app
    from server.cli import resolve_model
    from server.settings import load_settings
    from storage import upgrade_database

    port = free_port()
    data = tmp_path_factory.mktemp("server")
    settings = load_settings(ROOT / "configs/cpu.yaml", port=port, max_body_bytes=65536,
                             database_url=f"sqlite+aiosqlite:///{data / 'codeface.db'}")
    upgrade_database(settings.database_url)
    server = ThreadedServer(create_app(settings, resolve_model(settings), tracing=True), port)
    url = f"http://127.0.0.1:{port}"
    server.start(url)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_name(server_url: str) -> str:
    return httpx.get(f"{server_url}/v1/models").json()["data"][0]["id"]


def _postgres_admin(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway Postgres database, dropped at the end of the session."""
    name = f"codeface_test_{uuid.uuid4().hex[:12]}"
    try:
        _postgres_admin(f'CREATE DATABASE "{name}"')
    except (OSError, Exception) as exc:  # connection refused, auth, timeout
        unavailable(f"Postgres is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'codeface.db'}"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each storage test runs against both databases, each migrated once by Alembic."""
    from storage import upgrade_database

    url = request.getfixturevalue(f"{request.param}_url")
    upgrade_database(url)
    return url
