"""Conversations against abuse, on the real engine and Postgres with auth on: a reply made of NUL (which Postgres text
cannot hold) is stored and the conversation answers, and another user cannot learn that a reply runs."""

from __future__ import annotations

import time
import uuid

import httpx

from support.conversation_client import SSEReader, messages_of, new_conversation

API = "/api/v1/conversations"
# SmolLM2's token for the byte 0x00: a reply made only of it is text full of NUL.
NUL_TOKEN = 190
REPLACEMENT_CHARACTER = "\ufffd"


def test_a_reply_of_nul_is_stored_and_the_conversation_answers(http: httpx.Client) -> None:
    """It used to wedge the conversation: its final write retried for 600 s (Postgres refused the NUL), the post
    got no answer and the next one a 409. NUL is streamed and stored as U+FFFD: the two agree."""
    conversation_id = new_conversation(http)
    nul_reply = {"max_tokens": 3, "ignore_eos": True, "allowed_token_ids": [NUL_TOKEN]}
    began = time.monotonic()
    answered = http.post(f"{API}/{conversation_id}/messages", json={"content": "Say nothing.", **nul_reply},
                         timeout=20)
    took = time.monotonic() - began
    assert answered.status_code == 201, answered.text
    stored = answered.json()["message"]
    assert stored["status"] == "length" and stored["content"] == REPLACEMENT_CHARACTER * 3, stored
    with http.stream("POST", f"{API}/{conversation_id}/messages",
                     json={"content": "Again.", "stream": True, **nul_reply}) as response:
        assert response.status_code == 200
        message_id = response.headers["x-message-id"]
        events = SSEReader(response).rest()
    streamed = "".join(e.data["delta"] for e in events if e.event == "message.delta")
    assert events[-1].event == "message.completed" and streamed == REPLACEMENT_CHARACTER * 3
    reply = next(m for m in messages_of(http, conversation_id) if m["id"] == message_id)
    assert (reply["status"], reply["content"]) == ("length", streamed)
    following = http.post(f"{API}/{conversation_id}/messages", json={"content": "And now?", "max_tokens": 4})
    assert following.status_code == 201, following.text
    # NUL in what the user sends is refused before anything is stored.
    assert http.post(f"{API}/{conversation_id}/messages", json={"content": "a\u0000b"}).status_code == 400
    assert len(messages_of(http, conversation_id)) == 6
    assert took < 10, took


def test_another_user_cannot_tell_that_a_reply_runs(http: httpx.Client, server_url: str) -> None:
    """A post to another user's conversation is a 404 while its reply runs, as when none does (a 409 would tell
    that the id exists and is busy)."""
    username, password = f"prober-{uuid.uuid4().hex[:6]}", "prober-password"
    assert http.post("/api/v1/users", json={"username": username, "password": password}).status_code == 201
    token = httpx.post(f"{server_url}/api/v1/auth/token",
                       data={"username": username, "password": password}).json()["access_token"]
    conversation_id = new_conversation(http)
    body = {"content": "Talk for a while.", "stream": True, "max_tokens": 1500, "ignore_eos": True}
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as other, \
            http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        SSEReader(response).next()
        probe = other.post(f"{API}/{conversation_id}/messages", json={"content": "is it busy?"})
        assert probe.status_code == 404, probe.text
        assert http.post(f"{API}/{conversation_id}/messages", json={"content": "me too"}).status_code == 409
        http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
