"""SSE listeners: one shared heartbeat clock (no timer per listener), caps per key and in all, idle close with a
reconnect event; over the ASGI transport with FakeEngine, and the Listeners class alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from server.conversations.listeners import Listeners, Signal, Wake
from server.exceptions import RateLimited, Unavailable

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


def test_os_limits_are_checked_with_clear_warnings(caplog: pytest.LogCaptureFixture) -> None:
    import resource

    from server.os_limits import check_listen_backlog, raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_open_file_limit(100) >= min(soft, 100)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard or hard == resource.RLIM_INFINITY
    with caplog.at_level("WARNING"):
        raise_open_file_limit(10**12)
        check_listen_backlog(10**9)
    assert "open-file limit" in caplog.text
    assert "somaxconn" in caplog.text or check_listen_backlog(1) is None
