"""The conversation routes over the ASGI transport with FakeEngine: CRUD, replies stored and streamed with ids,
resume with Last-Event-ID, trimming at the context limit, 409s and every 4xx."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from loadtests.sse import iter_events
from server.conversations.run import EVICT_EVERY_S

from fast.fake_engine import TEMPLATE_REFUSES, FakeEngine

API = "/api/v1/conversations"


async def new_conversation(http: httpx.AsyncClient, title: str = "") -> str:
    response = await http.post(API, json={"title": title})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_crud_and_pagination(client: httpx.AsyncClient) -> None:
    made = [await new_conversation(client, f"c{i}") for i in range(3)]
    page = (await client.get(API, params={"limit": 2})).json()
    rest = (await client.get(API, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [c["id"] for c in page["data"] + rest["data"]] == made[::-1] and rest["next_cursor"] is None
    renamed = await client.patch(f"{API}/{made[0]}", json={"title": "renamed"})
    assert renamed.json()["title"] == "renamed"
    assert (await client.delete(f"{API}/{made[0]}")).status_code == 204
    assert (await client.get(f"{API}/{made[0]}")).status_code == 404


async def test_reply_is_stored(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    conversation_id = await new_conversation(client)
    response = await client.post(f"{API}/{conversation_id}/messages", json={"content": "Hi", "max_tokens": 4,
                                                                          "ignore_eos": True})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["message"]["content"] == "w0 w1 w2 w3 " and body["message"]["status"] == "length"
    assert response.headers["x-message-id"] == body["message"]["id"] and response.headers["x-dropped-turns"] == "0"
    stored = (await client.get(f"{API}/{conversation_id}")).json()
    assert [(m["role"], m["status"]) for m in stored["messages"]] == [("user", "completed"), ("assistant", "length")]
    assert stored["title"] == "Hi"
    assert engine.prepared[-1][1]["max_tokens"] == 4


async def test_stream_events_and_resume(client: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(client)
    response = await client.post(f"{API}/{conversation_id}/messages",
                                 json={"content": "Hi", "max_tokens": 3, "ignore_eos": True, "stream": True})
    events = list(iter_events(response.text.splitlines()))
    assert [(e.id, e.event) for e in events] == [("1", "message.delta"), ("2", "message.delta"),
                                                 ("3", "message.delta"), ("4", "message.completed")]
    assert events[-1].json()["completion_tokens"] == 3
    message_id = response.headers["x-message-id"]
    resumed = await client.get(f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                               headers={"Last-Event-ID": "2"})
    assert [e.id for e in iter_events(resumed.text.splitlines())] == ["3", "4"]
    too_far = await client.get(f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                               headers={"Last-Event-ID": "9"})
    assert too_far.status_code == 400


async def test_a_resume_after_the_buffer_expired_gets_the_stored_reply_next(client_for) -> None:
    """The replay of a reply no longer buffered takes the id after the client's Last-Event-ID: a client that skips
    ids it has seen (the chat page does) keeps it, and the resume has neither gap nor duplicate."""
    async with client_for(FakeEngine(), reply_retention_s=0.01) as http:
        conversation_id = await new_conversation(http)
        response = await http.post(f"{API}/{conversation_id}/messages",
                                   json={"content": "Hi", "max_tokens": 3, "ignore_eos": True, "stream": True})
        message_id = response.headers["x-message-id"]
        await asyncio.sleep(EVICT_EVERY_S + 0.1)
        # Finished buffers are evicted when a reply starts: this one's has expired by then.
        await http.post(f"{API}/{await new_conversation(http)}/messages", json={"content": "Hi", "max_tokens": 1})
        for seen in (0, 2, 4):
            resumed = await http.get(f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                                     headers={"Last-Event-ID": str(seen)})
            events = list(iter_events(resumed.text.splitlines()))
            assert [(e.id, e.event) for e in events] == [(str(seen + 1), "message.completed")], resumed.text
            assert events[0].json()["replayed"] and events[0].json()["content"] == "w0 w1 w2 "


async def test_history_is_trimmed_to_fit(client_for) -> None:
    async with client_for(FakeEngine(max_model_len=200)) as http:
        conversation_id = await new_conversation(http)
        dropped = []
        for _ in range(4):
            response = await http.post(f"{API}/{conversation_id}/messages",
                                       json={"content": "x" * 40, "max_tokens": 60, "ignore_eos": True})
            assert response.status_code == 201, response.text
            dropped.append(int(response.headers["x-dropped-turns"]))
        assert dropped[0] == 0 and dropped[-1] >= 2
        assert len((await http.get(f"{API}/{conversation_id}")).json()["messages"]) == 8


async def test_seed_shapes(client: httpx.AsyncClient) -> None:
    started = await client.post("/api/v1/chat", json={"message": "Hello there"})
    assert started.status_code == 200 and started.json()["reply"]
    conversation_id = started.json()["conversation_id"]
    again = await client.post("/api/v1/chat", json={"message": "Again", "conversation_id": conversation_id})
    assert again.json()["conversation_id"] == conversation_id


@pytest.mark.parametrize("body, param", [
    (b'{"content": ""}', "content"),
    (b'{"content": "hi", "n": 2}', "n"),
    (b'{"content": "hi", "logprobs": true}', "logprobs"),
    (b'{"content": "hi", "colour": "red"}', None),
    (b'{"content": "hi", "temperature": 9}', "temperature"),
    (('{"content": "' + TEMPLATE_REFUSES + '"}').encode(), "content"),
])
async def test_bad_messages_change_nothing(client: httpx.AsyncClient, body: bytes, param: str | None) -> None:
    conversation_id = await new_conversation(client)
    response = await client.post(f"{API}/{conversation_id}/messages", content=body)
    assert response.status_code == 400, response.text
    if param:
        assert response.json()["error"]["param"] == param
    assert (await client.get(f"{API}/{conversation_id}")).json()["messages"] == []


# An id no row has (fixed, so that the test ids are the same in every collection: pytest-xdist compares them).
MISSING = "5d1c0e6a-9a7e-4c1b-8f2e-000000000404"


@pytest.mark.parametrize("method, path, status", [
    ("GET", API + "?limit=0", 400),
    ("GET", API + "?limit=%C2%B2", 400),
    ("GET", API + "?cursor=%%%", 400),
    # Out of range once in UTC, without an offset, without an id (tests/test_conversations.py: more, on Postgres).
    ("GET", API + "?cursor=MDAwMS0wMS0wMVQwMDowMDowMCswNTowMHwzZjBjMWI3ZS04ZDJhLTRjNTUtOWE1MS0wZDZmNWUyYjljMTE=", 400),
    ("GET", API + "?cursor=MjAyNC0wNS0wMVQxMjowMDowMHwzZjBjMWI3ZS04ZDJhLTRjNTUtOWE1MS0wZDZmNWUyYjljMTE=", 400),
    ("GET", API + "?cursor=MjAyNC0wNS0wMVQxMjowMDowMCswMDowMA==", 400),
    ("GET", API + "/not-a-uuid", 404),
    ("GET", API + f"/{MISSING}", 404),
    ("GET", API + f"/{MISSING}?after_seq=2147483648", 400),
    ("DELETE", API + f"/{MISSING}", 404),
    ("GET", API + f"/{MISSING}/stream", 404),
    ("POST", API + f"/{MISSING}/messages/{MISSING}/cancel", 404),
    ("GET", f"/api/v1/stream/{MISSING}", 404),
])
async def test_bad_requests(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    response = await client.request(method, path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == status


async def test_last_event_id_must_be_ascii_digits(client: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(client)
    response = await client.get(f"{API}/{conversation_id}/stream", headers={"Last-Event-ID": "²".encode()})
    assert response.status_code == 400 and response.json()["error"]["param"] == "Last-Event-ID"


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v1/keys", {"name": "k"}), ("GET", "/api/v1/keys", None),
    ("POST", "/api/v1/users", {"username": "someone", "password": "a-long-password"}),
])
async def test_identity_routes_refuse_with_auth_off(client: httpx.AsyncClient, method: str, path: str,
                                                    body: object) -> None:
    """What they would make would persist and apply once auth is turned on."""
    response = await client.request(method, path, json=body)
    assert response.status_code == 403 and "auth is off" in response.json()["message"]
    token = await client.post("/api/v1/auth/token", data={"username": "a", "password": "b"})
    assert token.status_code == 403


async def test_a_failed_reply_does_not_break_a_strict_template(client: httpx.AsyncClient) -> None:
    """A failed reply leaves its question unanswered; the next post must not render two user turns in a row."""
    conversation_id = await new_conversation(client)
    failed = await client.post(f"{API}/{conversation_id}/messages", json={"content": "<fail>"})
    assert failed.json()["message"]["status"] == "failed"
    following = await client.post(f"{API}/{conversation_id}/messages", json={"content": "Again"})
    assert following.status_code == 201 and following.json()["message"]["status"] in ("completed", "length")


async def test_nul_in_stored_text_is_a_400(client: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(client)
    response = await client.post(f"{API}/{conversation_id}/messages", json={"content": "a\u0000b"})
    assert response.status_code == 400 and response.json()["param"] == "content"
    assert (await client.post(API, json={"title": "x\u0000"})).status_code == 400


async def test_deeply_nested_bodies_are_a_400(client: httpx.AsyncClient) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "zzz": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    response = await client.post("/v1/chat/completions", content=body)
    assert response.status_code == 400


async def test_a_stream_ends_once_its_reply_is_stored(client: httpx.AsyncClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow final write (0.5 s here): the final event goes out at once, the stream ends after the write, so the
    read that follows finds the reply stored."""
    from storage.repository import Messages

    finish = Messages.finish

    async def slow_finish(self: Messages, *args: object, **kwargs: object) -> object:
        await asyncio.sleep(0.5)
        return await finish(self, *args, **kwargs)

    monkeypatch.setattr(Messages, "finish", slow_finish)
    conversation_id = await new_conversation(client)
    response = await client.post(f"{API}/{conversation_id}/messages",
                                 json={"content": "Hi", "max_tokens": 3, "ignore_eos": True, "stream": True})
    assert list(iter_events(response.text.splitlines()))[-1].event == "message.completed"
    stored = (await client.get(f"{API}/{conversation_id}")).json()["messages"]
    assert [(m["status"], m["content"]) for m in stored] == [("completed", "Hi"), ("length", "w0 w1 w2 ")]
