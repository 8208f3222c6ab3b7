"""Shared reply streams (`reply_streams_url`) on the fault group's own Redis, broken in turn: hung (SIGSTOP) under
resume, cancel, delete and the seed's stream route on an engine-less replica; a reply that runs past the resume
window; and Redis stopped (connections refused) under a reply that another replica mirrors. The server that
generates and the replica that mirrors keep their rate limits in the suite's Redis: only the streams break."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faults.conftest import SECRET, OwnPostgres, OwnRedis, admin_key, spawn
from servers import SpawnedServer
from support.conversation_client import API, Event, SSEReader, new_conversation, wait_for_status

RETENTION_S = 3  # the resume window of both replicas here
TIMEOUT_S = 0.5  # reply_streams_timeout_s of both replicas here
LONG = {"stream": True, "max_tokens": 1500, "ignore_eos": True}


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory, own_postgres: OwnPostgres, own_redis: OwnRedis,
              redis_url: str) -> Iterator[SpawnedServer]:
    process = spawn(tmp_path_factory.mktemp("reply-streams"), own_postgres.url, redis_url,
                    reply_streams_url=own_redis.url, reply_retention_s=RETENTION_S,
                    reply_streams_timeout_s=TIMEOUT_S, sse_heartbeat_s=1, sse_idle_heartbeat_s=1)
    process.start()
    try:
        yield process
    finally:
        process.stop_soon()


@pytest.fixture(scope="module")
def key(own_postgres: OwnPostgres, redis_url: str) -> str:
    from storage import upgrade_database

    upgrade_database(own_postgres.url)
    return admin_key(own_postgres.url, redis_url)


@pytest.fixture
def mirror(spawn_frontend: Callable[..., str], own_postgres: OwnPostgres, own_redis: OwnRedis,
           redis_url: str) -> str:
    """An engine-less replica on the same Postgres and reply streams."""
    return spawn_frontend(own_postgres.url, redis_url, reply_streams_url=own_redis.url, secret_key=SECRET,
                          reply_retention_s=RETENTION_S, reply_streams_timeout_s=TIMEOUT_S, sse_heartbeat_s=1,
                          sse_idle_heartbeat_s=1)


def client(url: str, key: str, timeout_s: float = 120) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)


@contextlib.contextmanager
def long_reply(http: httpx.Client) -> Iterator[tuple[str, str, SSEReader]]:
    """A new conversation's reply of 1,500 tokens, streaming: its conversation and message ids, and its reader
    past the first event."""
    conversation_id = new_conversation(http)
    with http.stream("POST", f"{API}/{conversation_id}/messages", json={"content": "Go on.", **LONG}) as posted:
        reader = SSEReader(posted)
        reader.next()
        yield conversation_id, posted.headers["x-message-id"], reader


def open_listeners(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        if family.name == "codeface_sse_listeners":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("no codeface_sse_listeners metric")


def test_hung_redis_answers_resume_cancel_and_delete_with_503(mirror: str, key: str, own_redis: OwnRedis,
                                                              measured: Callable[[str, object], None]) -> None:
    """Redis accepts connections and never answers: each route that asks it answers within a bound (503 with
    Retry-After; the seed's stream a reconnect event), and frees its listener's place."""
    with client(mirror, key, timeout_s=15) as http:
        conversation_id = new_conversation(http)
        unknown = uuid.uuid4()
        own_redis.pause()
        try:
            slowest = 0.0
            for method, path, params in [
                    ("GET", f"{API}/{conversation_id}/stream", {"message_id": str(unknown)}),
                    ("GET", f"{API}/{conversation_id}/stream", {}),
                    ("POST", f"{API}/{conversation_id}/messages/{unknown}/cancel", {}),
                    ("DELETE", f"{API}/{conversation_id}", {})]:
                began = time.monotonic()
                response = http.request(method, path, params=params)
                slowest = max(slowest, time.monotonic() - began)
                assert response.status_code == 503, (method, path, response.text)
                assert int(response.headers["retry-after"]) > 0
            began = time.monotonic()
            seed = http.get(f"/api/v1/stream/{conversation_id}")
            slowest = max(slowest, time.monotonic() - began)
            assert seed.status_code == 200 and '"type":"reconnect"' in seed.text, seed.text
            assert open_listeners(mirror) == 0
            assert slowest < 5 * TIMEOUT_S + 1, slowest
            measured("slowest answer with Redis hung (s)", round(slowest, 2))
        finally:
            own_redis.resume()
        assert http.get(f"{API}/{conversation_id}").status_code == 200  # the DELETE above deleted nothing
        assert http.delete(f"{API}/{conversation_id}").status_code == 204


def test_redis_late_once_is_asked_again_not_refused(generator: SpawnedServer, mirror: str, key: str,
                                                     own_redis: OwnRedis,
                                                     measured: Callable[[str, object], None]) -> None:
    """Redis stalls for longer than the timeout, once, while a replica looks a reply up (a stalled process, a fork):
    the call is sent again and the resume is served, not refused with 503 (CI once got that 503 from one late
    answer on a loaded machine). A hung Redis still fails within twice the timeout (the test above)."""
    with client(generator.url, key) as http, client(mirror, key) as other, \
            long_reply(http) as (conversation_id, message_id, reader):
        path, params = f"{API}/{conversation_id}/stream", {"message_id": message_id}
        # The mirror's connection to Redis is open before the stall (a lookup of another reply), and it holds
        # no mirror of this one yet: the resume below must look it up.
        assert other.get(path, params={"message_id": str(uuid.uuid4())}).status_code == 404
        stall_s = TIMEOUT_S * 1.6
        own_redis.pause()
        resumer = threading.Timer(stall_s, own_redis.resume)
        resumer.start()
        began = time.monotonic()
        try:
            with other.stream("GET", path, params=params,
                              headers={"Last-Event-ID": str(reader.last_id)}) as resumed:
                answered_s = time.monotonic() - began
                assert resumed.status_code == 200, resumed.read()
                assert SSEReader(resumed).next().id == reader.last_id + 1
        finally:
            resumer.join()
        assert stall_s - 0.1 < answered_s < 2 * TIMEOUT_S + 0.5, answered_s
        measured("resume answered after a stall of 0.8 s (timeout 0.5 s), s", round(answered_s, 2))
        assert other.post(f"{API}/{conversation_id}/messages/{message_id}/cancel").status_code == 200


def test_a_reply_longer_than_the_resume_window_resumes_and_cancels_elsewhere(
        generator: SpawnedServer, mirror: str, key: str, own_redis: OwnRedis) -> None:
    """The reply's keys in Redis expire the resume window after the reply ends, not after it starts: a reply
    running past the window is resumed and cancelled through the other replica, and its window starts at its end."""
    with client(generator.url, key) as http, client(mirror, key) as other:
        with long_reply(http) as (conversation_id, message_id, reader):
            time.sleep(RETENTION_S + 2)
            with other.stream("GET", f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                              headers={"Last-Event-ID": str(reader.last_id)}) as resumed:
                # Not 409 "being generated by another replica": the other replica finds it and follows it.
                assert resumed.status_code == 200, resumed.read()
                assert SSEReader(resumed).next().id == reader.last_id + 1
            cancelled = other.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
            rest = reader.rest()
        assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "cancelled"
        meta = f"codeface:reply:{message_id}:meta"
        deadline = time.monotonic() + 5
        while int(own_redis.cli("TTL", meta)) > RETENTION_S and time.monotonic() < deadline:
            time.sleep(0.1)  # the final event's batch is on its way to Redis
        assert 0 < int(own_redis.cli("TTL", meta)) <= RETENTION_S
        assert own_redis.cli("GET", f"codeface:conversation:{conversation_id}:reply") == message_id
        time.sleep(RETENTION_S + 1)
        assert own_redis.cli("EXISTS", meta) == "0"


def test_redis_stopped_under_a_mirrored_reply_leaves_no_gap(generator: SpawnedServer, mirror: str, key: str,
                                                            own_redis: OwnRedis,
                                                            measured: Callable[[str, object], None]) -> None:
    """Redis refuses connections for 3 s in the middle of a reply that a listener follows on the other replica:
    the generating replica sends the events again once Redis is back, and the listener gets every event once,
    in order, to the reply's end (no gap, no false "the replica stopped")."""
    with client(generator.url, key) as http, client(mirror, key) as other:
        conversation_id = new_conversation(http)
        body = {"content": "Tell me a story.", "stream": True, "max_tokens": 400, "ignore_eos": True}
        with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as posted:
            message_id = posted.headers["x-message-id"]
            SSEReader(posted).next()
            events: list[Event] = []
            failures: list[BaseException] = []

            def listen() -> None:
                try:
                    with other.stream("GET", f"{API}/{conversation_id}/stream",
                                      params={"message_id": message_id}) as followed:
                        assert followed.status_code == 200, followed.read()
                        reader = SSEReader(followed)
                        while True:
                            events.append(reader.next())
                except EOFError:
                    pass
                except BaseException as exc:  # reported by the test's thread
                    failures.append(exc)

            listener = threading.Thread(target=listen)
            listener.start()
            deadline = time.monotonic() + 60
            while len(events) < 5 and time.monotonic() < deadline and not failures:
                time.sleep(0.05)
            own_redis.stop()
            time.sleep(3)
            own_redis.start()
            listener.join(timeout=180)
        assert not failures and not listener.is_alive(), failures
        final = events[-1]
        assert final.event == "message.completed", final
        assert final.data["status"] == "length"
        assert [e.id for e in events] == list(range(1, len(events) + 1))  # every event once, in order
        streamed = "".join(e.data["delta"] for e in events[:-1])
        assert wait_for_status(http, conversation_id, message_id)["content"] == streamed
        measured("events the mirror's listener got", len(events))
