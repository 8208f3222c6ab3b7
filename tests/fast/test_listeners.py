"""SSE listeners: one shared heartbeat clock (no timer per listener), caps per key and in all, idle close with a
reconnect event; over the ASGI transport with FakeEngine, and the Listeners class alone; and the OS limits that many
open streams need (open files, listen backlog)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from server.conversations.listeners import Listeners, Signal, Wake
from server.exceptions import RateLimited, Unavailable
from server.os_limits import RESERVED_FDS

from fast.fake_engine import FakeEngine

API = "/api/v1/conversations"


async def test_a_signal_wakes_every_waiter_and_the_clock_sends_heartbeats() -> None:
    listeners = Listeners(heartbeat_s=0.2, idle_timeout_s=0, max_total=0, max_per_caller=0)
    signal = Signal()
    opened = [listeners.open("key:a", may_idle=False) for _ in range(200)]
    waits = [asyncio.create_task(listeners.wait(listener, signal)) for listener in opened]
    await asyncio.sleep(0.01)
    signal.notify()
    assert set(await asyncio.gather(*waits)) == {Wake.EVENT}
    for listener in opened:
        listeners.wrote(listener, event=True)
    waits = [asyncio.create_task(listeners.wait(listener, signal)) for listener in opened]
    assert set(await asyncio.wait_for(asyncio.gather(*waits), 1.0)) == {Wake.HEARTBEAT}
    assert not signal.waiters  # woken by the clock, they left the signal
    for listener in opened:
        listeners.close(listener)
    assert listeners.open_count == 0
    await listeners.stop()


async def test_an_idle_listener_is_told_to_reconnect_and_the_caps_refuse() -> None:
    listeners = Listeners(heartbeat_s=0.1, idle_timeout_s=0.3, max_total=3, max_per_caller=2)
    first = listeners.open("key:a", may_idle=True)
    wakes = [await listeners.wait(first, Signal()) for _ in range(4)]
    assert wakes[-1] is Wake.IDLE and Wake.HEARTBEAT in wakes
    listeners.open("key:a", may_idle=True)
    with pytest.raises(RateLimited):
        listeners.open("key:a", may_idle=True)
    listeners.open("key:b", may_idle=True)
    with pytest.raises(Unavailable):
        listeners.open("key:c", may_idle=True)
    listeners.open("key:c", may_idle=False, capped=False)  # an admitted generation's own stream
    listeners.close(first)
    listeners.close(first)  # idempotent
    assert listeners.open_count == 3
    await listeners.stop()


async def test_the_per_user_cap_counts_all_of_a_users_keys() -> None:
    """Twenty keys of one user do not hold twenty per-key caps: the user's cap counts them together."""
    listeners = Listeners(heartbeat_s=1, idle_timeout_s=0, max_total=0, max_per_caller=2, max_per_user=3)
    opened = [listeners.open(f"key:{n}", user="user:u", may_idle=True) for n in range(3)]
    with pytest.raises(RateLimited, match="this user"):
        listeners.open("key:3", user="user:u", may_idle=True)
    listeners.open("key:other", user="user:v", may_idle=True)  # another user is not counted against it
    listeners.close(opened[0])
    listeners.open("key:3", user="user:u", may_idle=True)  # a closed one frees the user's place
    await listeners.stop()


async def test_seed_stream_waits_with_heartbeats_then_reconnects(client_for: Callable[..., httpx.AsyncClient],
                                                               engine: FakeEngine) -> None:
    async with client_for(engine, sse_heartbeat_s=0.1, sse_idle_heartbeat_s=0.1, sse_idle_timeout_s=0.5) as http:
        conversation_id = (await http.post(API, json={})).json()["id"]
        response = await http.get(f"/api/v1/stream/{conversation_id}")
    assert response.status_code == 200
    assert response.text.count(": keep-alive") >= 2
    assert response.text.endswith('data: {"type":"reconnect"}\n\n')


async def test_listeners_past_the_key_cap_get_429(client_for: Callable[..., httpx.AsyncClient],
                                                  engine: FakeEngine) -> None:
    async with client_for(engine, sse_heartbeat_s=0.1, sse_idle_heartbeat_s=0.1, sse_idle_timeout_s=0.5,
                          max_sse_listeners_per_key=1) as http:
        conversation_id = (await http.post(API, json={})).json()["id"]
        first, second = await asyncio.gather(http.get(f"/api/v1/stream/{conversation_id}"),
                                             http.get(f"/api/v1/stream/{conversation_id}"))
        statuses = sorted([first.status_code, second.status_code])
        refused = first if first.status_code == 429 else second
        assert statuses == [200, 429] and refused.headers["retry-after"]
        assert (await http.get(f"/api/v1/stream/{conversation_id}")).status_code == 200  # the slot came back


def test_the_open_file_limit_is_raised_to_the_hard_one() -> None:
    """In a process of its own whose soft limit starts below the hard one (and below what 100 connections need)."""
    import resource
    import subprocess
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    lowered = 64
    assert hard == resource.RLIM_INFINITY or hard > lowered, "the hard limit leaves nothing to raise"
    script = ("import resource\n"
              "from server.os_limits import raise_open_file_limit\n"
              "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              f"resource.setrlimit(resource.RLIMIT_NOFILE, ({lowered}, hard))\n"
              "returned = raise_open_file_limit(100)\n"
              "print(returned, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    returned, now = (int(value) for value in result.stdout.split())
    expected = max(lowered, 100 + RESERVED_FDS) if hard == resource.RLIM_INFINITY else hard
    assert (returned, now) == (expected, expected)


def test_os_limits_that_stay_short_are_warned_about(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import resource

    from server import os_limits

    limits = {"soft": 256, "hard": 512}
    monkeypatch.setattr(os_limits.resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_: int, values: tuple[int, int]) -> None:
        limits["soft"] = values[0]

    monkeypatch.setattr(os_limits.resource, "setrlimit", setrlimit)
    with caplog.at_level("WARNING"):
        assert os_limits.raise_open_file_limit(100) == 512  # raised to the hard limit, still short of 1124
    assert "the open-file limit is 512, below the 1124 that 100 event streams and connections need" in caplog.text

    def refused(_: int, values: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    limits.update(soft=256, hard=resource.RLIM_INFINITY)
    monkeypatch.setattr(os_limits.resource, "setrlimit", refused)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert os_limits.raise_open_file_limit(100) == 256
    assert "could not raise the open-file limit from 256: not allowed" in caplog.text

    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    monkeypatch.setattr(os_limits, "SOMAXCONN", somaxconn)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert os_limits.check_listen_backlog(4096) == 128
    assert "net.core.somaxconn is 128, below the listen backlog of 4096" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert os_limits.check_listen_backlog(128) == 128
    assert caplog.text == ""
    monkeypatch.setattr(os_limits, "SOMAXCONN", tmp_path / "absent")
    assert os_limits.check_listen_backlog(4096) is None
