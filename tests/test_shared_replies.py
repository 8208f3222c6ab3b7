"""Replies shared through Redis (`reply_streams_url`): the suite's server generates, a second replica without an
engine (same Postgres, same Redis) serves the rest, with no sticky routing: a stream started on one resumes on the
other with no gap or duplicate, a cancel sent to the other stops the reply, the seed's stream route on the other
receives a reply generated here, and a listener on the other keeps the reply alive past the grace period."""

from __future__ import annotations

import time

import httpx
import pytest

from support.conversation_client import API, SeedListener, SSEReader, new_conversation, wait_for_status

GRACE_S = 3.0  # the suite server's conversation_grace_s
LONG = {"stream": True, "max_tokens": 1500, "ignore_eos": True}


@pytest.fixture(scope="module")
def other(start_replica, server_database_url: str, redis_url: str) -> str:
    return start_replica(server_database_url, redis_url, reply_streams_url=redis_url)


def test_a_stream_resumes_on_another_replica(http: httpx.Client, other: str, auth_headers: dict[str, str]) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Tell me a long story.", "stream": True, "max_tokens": 120, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        first = [reader.next() for _ in range(5)]
    with httpx.stream("GET", f"{other}{API}/{conversation_id}/stream", params={"message_id": message_id},
                      headers={**auth_headers, "Last-Event-ID": str(reader.last_id)}, timeout=120) as resumed:
        assert resumed.status_code == 200, resumed.read()
        rest = SSEReader(resumed).rest()
    assert [e.id for e in rest] == list(range(6, 6 + len(rest)))  # no duplicate, no gap
    assert rest[-1].event == "message.completed" and rest[-1].data["completion_tokens"] == 120
    streamed = "".join(e.data["delta"] for e in first + rest[:-1])
    assert wait_for_status(http, conversation_id, message_id)["content"] == streamed


def test_a_cancel_sent_to_another_replica_stops_the_reply(http: httpx.Client, other: str,
                                                          auth_headers: dict[str, str]) -> None:
    conversation_id = new_conversation(http)
    with http.stream("POST", f"{API}/{conversation_id}/messages", json={"content": "Go on.", **LONG}) as response:
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        reader.next()
        cancelled = httpx.post(f"{other}{API}/{conversation_id}/messages/{message_id}/cancel", headers=auth_headers,
                               timeout=60)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        rest = reader.rest()
    assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "cancelled"
    assert 0 < rest[-1].data["completion_tokens"] < LONG["max_tokens"]


async def test_the_seed_stream_on_another_replica_gets_a_reply_generated_here(
        server_url: str, other: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(headers=auth_headers, timeout=120) as client:
        conversation_id = (await client.post(f"{server_url}{API}", json={"title": "seed"})).json()["id"]
        listener = SeedListener(client, f"{other}/api/v1/stream/{conversation_id}")
        await listener.attached()  # the other replica waits for the conversation's next reply
        posted = await client.post(f"{server_url}/api/v1/chat", json={"message": "Hello there",
                                                                       "conversation_id": conversation_id})
        assert posted.status_code == 200
        assert await listener.reply(60) == posted.json()["reply"]


def test_a_listener_on_another_replica_keeps_the_reply_going(http: httpx.Client, other: str,
                                                             auth_headers: dict[str, str]) -> None:
    """The suite's grace period is 3 s: with its only listener on the other replica, the reply goes on past it (to
    its end, or still streaming at three times the grace period, whichever comes first on this machine)."""
    conversation_id = new_conversation(http)
    body = {"content": "Tell me everything.", "stream": True, "max_tokens": 600, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        SSEReader(response).next()
    began = time.monotonic()
    with httpx.stream("GET", f"{other}{API}/{conversation_id}/stream", params={"message_id": message_id},
                      headers=auth_headers, timeout=300) as attached:
        reader = SSEReader(attached)
        while (event := reader.next()).event != "message.completed" and time.monotonic() - began < 3 * GRACE_S:
            pass
    if event.event == "message.completed":
        assert event.data["status"] == "length", (event.data, time.monotonic() - began)
    else:
        assert event.event == "message.delta", event
