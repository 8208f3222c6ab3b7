"""Browser tests: Playwright (Python) driving Debian's Chromium, headless, against the suite's real server. The
browser is the system's (`/usr/bin/chromium`, installed by .ci/run); the test tool never downloads one.
Screenshots go to ARTIFACTS_DIR (default .artifacts/browser/)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import unavailable

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", Path(__file__).resolve().parents[2] / ".artifacts" / "browser"))


@pytest.fixture(scope="module")
def browser(server_url: str, auth_headers: dict[str, str]) -> Iterator[object]:
    """Started after the server, and stopped with the module: while Playwright's sync API runs, its event loop
    is the running loop of this thread, where other fixtures and tests could not run theirs (asyncio.run)."""
    if not shutil.which(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context and page; a screenshot of the page when the test ends, passed or not. The test
    fails at teardown on any uncaught page error or console error, but those whose text contains one of
    `page.expected_errors` (a test that provokes a 429 or cuts the network expects the browser to log it)."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    console_errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: console_errors.append(f"{message.text} ({message.location.get('url')})")
            if message.type == "error" else None)
    page.errors = errors
    page.expected_errors = []
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    context.close()
    unexpected = [error for error in errors + console_errors
                  if not any(expected in error for expected in page.expected_errors)]
    if unexpected:
        pytest.fail(f"the browser logged errors: {unexpected}")


class CuttableProxy:
    """A TCP relay in front of the server whose connections the test can cut, as a network drop does: the page
    sees its open stream end mid-reply (Chromium's offline emulation leaves an open response running)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        # Cleared by hold(): new connections wait (as behind a slow network) and then go to upstream_port.
        self.admitting = threading.Event()
        self.admitting.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self.admitting.wait()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self.lock:
            self.open |= {client, upstream}
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def hold(self) -> None:
        self.admitting.clear()

    def release(self, upstream_port: int | None = None) -> None:
        """New connections, and those held meanwhile, go on (to `upstream_port` if given)."""
        if upstream_port is not None:
            self.upstream_port = upstream_port
        self.admitting.set()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self.lock:
                    self.open.discard(end)
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Reset every open connection; returns how many there were."""
        with self.lock:
            cut = list(self.open)
        for end in cut:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        return len(cut)

    def close(self) -> None:
        self.listener.close()
        self.admitting.set()
        self.cut()


@pytest.fixture
def proxy(server_url: str) -> Iterator[CuttableProxy]:
    relay = CuttableProxy(int(server_url.rsplit(":", 1)[1]))
    yield relay
    relay.close()


@pytest.fixture
def user(server_url: str, auth_headers: dict[str, str]) -> tuple[str, str]:
    """A fresh user (username, password) of the suite's server."""
    username, password = f"browser-{uuid.uuid4().hex[:8]}", "a-long-browser-password"
    made = httpx.post(f"{server_url}/api/v1/users", headers=auth_headers,
                      json={"username": username, "password": password})
    assert made.status_code == 201, made.text
    return username, password


def token_of(server_url: str, user: tuple[str, str]) -> str:
    response = httpx.post(f"{server_url}/api/v1/auth/token", data={"username": user[0], "password": user[1]})
    return str(response.json()["access_token"])
