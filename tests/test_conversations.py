"""Conversations against the real engine and Postgres (and SQLite for the routes that do not generate): history
the model sees, trimming, SSE events, resume with Last-Event-ID, grace-period cancel, cancel, failures, 409s,
pagination, isolation and every 4xx."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from conftest import RunningServer
from engine_faults import engine_fails
from support.conversation_client import API, SSEReader, messages_of, new_conversation, wait_for_status


def test_multi_turn_history_reaches_the_model(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    prompt_tokens = []
    for text in ("My name is Ada.", "I live in Paris.", "What is my name?"):
        response = http.post(f"{API}/{conversation_id}/messages", json={"content": text, "max_tokens": 24,
                                                                       "temperature": 0})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["message"]["status"] in ("completed", "length") and body["message"]["content"]
        assert body["user_message"]["content"] == text and body["dropped_turns"] == 0
        prompt_tokens.append(body["message"]["prompt_tokens"])
    # Every turn carries the earlier ones: the prompt grows by more than the new message.
    assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2]
    stored = messages_of(http, conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert [m["seq"] for m in stored] == list(range(1, 7))
    assert all(m["completion_tokens"] > 0 for m in stored if m["role"] == "assistant")
    assert http.get(f"{API}/{conversation_id}").json()["title"] == "My name is Ada."


def test_trimming_at_the_context_limit(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    long_text = "The quick brown fox jumps over the lazy dog. " * 90  # about 900 tokens
    # Two messages and a reply fit the 2,048-token context, three messages do not; short replies keep the test
    # fast on a slow CPU (decoding a token costs far more than prefilling one).
    reply_tokens = 40
    dropped = []
    for _ in range(3):
        response = http.post(f"{API}/{conversation_id}/messages",
                             json={"content": long_text, "max_tokens": reply_tokens, "temperature": 0})
        assert response.status_code == 201, response.text
        dropped.append(response.json()["dropped_turns"])
        assert response.json()["message"]["prompt_tokens"] + reply_tokens <= 2048
    assert dropped[0] == 0 and dropped[-1] >= 2
    assert len(messages_of(http, conversation_id)) == 6  # trimming drops turns from the prompt, not the database


def test_stream_disconnect_then_resume_loses_nothing(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Tell me a long story.", "stream": True, "max_tokens": 120, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        first = [reader.next() for _ in range(5)]
    assert [e.id for e in first] == [1, 2, 3, 4, 5] and all(e.event == "message.delta" for e in first)
    time.sleep(1.0)  # the reply goes on while nobody listens
    with http.stream("GET", f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                     headers={"Last-Event-ID": str(reader.last_id)}) as resumed:
        assert resumed.status_code == 200
        rest = SSEReader(resumed).rest()
    assert [e.id for e in rest] == list(range(6, 6 + len(rest)))  # no duplicate, no gap
    assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "length"
    assert rest[-1].data["completion_tokens"] == 120
    streamed = "".join(e.data["delta"] for e in first + rest[:-1])
    stored = wait_for_status(http, conversation_id, message_id)
    assert stored["content"] == streamed and stored["completion_tokens"] == 120


def test_no_listener_for_the_grace_period_cancels(http: httpx.Client, server_url: str) -> None:
    """The test server's grace period is 3 s."""
    conversation_id = new_conversation(http)
    body = {"content": "Go on and on.", "stream": True, "max_tokens": 1500, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        SSEReader(response).next()
    reply = wait_for_status(http, conversation_id, message_id, timeout_s=20)
    assert reply["status"] == "cancelled" and reply["content"] and 0 < reply["completion_tokens"] < 1500
    deadline = time.monotonic() + 10
    while httpx.get(f"{server_url}/readyz").json()["engine"]["requests_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{server_url}/readyz").json()["engine"]["requests_in_flight"] == 0


def test_explicit_cancel_stops_at_once(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Count forever.", "stream": True, "max_tokens": 1500, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        reader.next()
        cancelled = http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        rest = reader.rest()
    assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "cancelled"
    assert http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel").status_code == 409


def test_engine_failure_is_stored_as_failed(http: httpx.Client, running_server: RunningServer) -> None:
    """The engine fails once the reply has started (injected into vLLM's stream): the user's message is already
    committed, so the reply is stored `failed` and listeners get message.error."""
    conversation_id = new_conversation(http)
    with engine_fails(running_server.app), \
            http.stream("POST", f"{API}/{conversation_id}/messages",
                        json={"content": "Hi", "stream": True, "max_tokens": 5}) as response:
        events = SSEReader(response).rest()
    assert [e.event for e in events] == ["message.error"] and events[0].data["status"] == "failed"
    stored = messages_of(http, conversation_id)  # the stream ends once the final write has landed
    assert [(m["role"], m["status"]) for m in stored] == [("user", "completed"), ("assistant", "failed")]


def test_what_a_client_reads_once_the_stream_ends_is_stored(http: httpx.Client) -> None:
    """The final event goes out at once; the stream ends once the final write has landed (bounded by
    FINAL_WRITE_WAIT_S), so a client that reads the conversation right after finds the reply as it streamed."""
    conversation_id = new_conversation(http)
    body = {"content": "Tell me a story.", "stream": True, "max_tokens": 24, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        events = SSEReader(response).rest()
    streamed = "".join(e.data["delta"] for e in events if e.event == "message.delta")
    reply = next(m for m in messages_of(http, conversation_id) if m["id"] == message_id)
    assert (reply["status"], reply["content"], reply["completion_tokens"]) == ("length", streamed, 24)


def test_engine_refusal_changes_nothing(http: httpx.Client) -> None:
    """vLLM refuses min_tokens > max_tokens. The one generation path asks the engine before anything is stored,
    so the refusal is a 400 and the conversation is unchanged."""
    conversation_id = new_conversation(http)
    response = http.post(f"{API}/{conversation_id}/messages",
                         json={"content": "Hi", "stream": True, "max_tokens": 5, "min_tokens": 50})
    assert response.status_code == 400 and "min_tokens" in response.json()["error"]["message"]
    assert messages_of(http, conversation_id) == []


def test_second_post_while_generating_gets_409(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "A long answer please.", "stream": True, "max_tokens": 400, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        SSEReader(response).next()
        clash = http.post(f"{API}/{conversation_id}/messages", json={"content": "me too"})
        assert clash.status_code == 409 and clash.json()["error"]["type"] == "conflict_error"
        http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
    assert [m["role"] for m in messages_of(http, conversation_id)] == ["user", "assistant"]


def test_seed_routes(http: httpx.Client) -> None:
    """The seed's contract (issue 12): 200 with the reply, and events framed for EventSource.onmessage (no event
    name; the name is the data's `type`)."""
    started = http.post("/api/v1/chat", json={"message": "Hello there"})
    assert started.status_code == 200
    conversation_id = started.json()["conversation_id"]
    again = http.post("/api/v1/chat", json={"message": "And again", "conversation_id": conversation_id})
    assert again.status_code == 200 and again.json()["conversation_id"] == conversation_id
    assert len(messages_of(http, conversation_id)) == 4
    # GET /api/v1/stream/{id}: attaches to the reply in progress.
    with http.stream("POST", "/api/v1/chat", json={"message": "Stream it", "conversation_id": conversation_id,
                                                    "stream": True}) as posted:
        SSEReader(posted).next()
        with http.stream("GET", f"/api/v1/stream/{conversation_id}") as attached:
            events = SSEReader(attached).rest()
    assert events[-1].data["type"] == "message.completed"


# --- routes that do not generate: on Postgres (the main server) and SQLite (a replica) ---------------------------

@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def crud(request: pytest.FixtureRequest, server_url: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    if request.param == "postgres":
        base = server_url
        headers = auth_headers
    else:
        start = request.getfixturevalue("start_replica")
        base = start(request.getfixturevalue("sqlite_server_database_url"), request.getfixturevalue("redis_url"),
                     auth_enabled=False, default_user=f"solo-{uuid.uuid4().hex[:6]}")
        headers = {}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        yield client


def test_create_rename_delete(crud: httpx.Client) -> None:
    conversation_id = new_conversation(crud, "first title")
    renamed = crud.patch(f"{API}/{conversation_id}", json={"title": "second title"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "second title"
    assert crud.delete(f"{API}/{conversation_id}").status_code == 204
    assert crud.get(f"{API}/{conversation_id}").status_code == 404
    assert crud.delete(f"{API}/{conversation_id}").status_code == 404


def test_list_pagination_newest_first(crud: httpx.Client) -> None:
    made = [new_conversation(crud, f"page-{i}") for i in range(5)]
    seen, cursor = [], None
    while True:
        page = crud.get(API, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen.index(made[4]) < seen.index(made[0])
    assert set(made) <= set(seen) and len(seen) == len(set(seen))


def b64(text: str | bytes) -> str:
    return base64.urlsafe_b64encode(text.encode() if isinstance(text, str) else text).decode()


SOME_ID = "3f0c1b7e-8d2a-4c55-9a51-0d6f5e2b9c11"
MALFORMED_CURSORS = [
    b64(f"0001-01-01T00:00:00+05:00|{SOME_ID}"),     # before year 1 in UTC: asyncpg's OverflowError, a 500
    b64(f"9999-12-31T23:59:59-05:00|{SOME_ID}"),     # past year 9999 in UTC
    b64(f"2024-05-01T12:00:00|{SOME_ID}"),           # no offset: the driver would read it in the server's zone
    b64(f"2024-05-01|{SOME_ID}"),
    b64("2024-05-01T12:00:00+00:00"),               # no id
    b64("2024-05-01T12:00:00+00:00|not-a-uuid"),
    b64(f"yesterday|{SOME_ID}"),
    b64(f"2024-05-01T12:00:00+24:00|{SOME_ID}"),
    b64(f"\x00|{SOME_ID}"),
    b64(b"\xff\xfe|" + SOME_ID.encode()),           # not UTF-8
    "%%%", "abc", "a" * 5000,                        # not base64
]


@pytest.mark.parametrize("cursor", MALFORMED_CURSORS)
def test_malformed_cursors_are_400(crud: httpx.Client, cursor: str) -> None:
    response = crud.get(API, params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cursor"


def test_cursors_at_the_ends_of_time_page_correctly(crud: httpx.Client) -> None:
    new_conversation(crud, "ends of time")
    # Representable however far off: past everything (the first page), before everything (nothing).
    latest = crud.get(API, params={"cursor": b64(f"9999-12-31T23:59:59+05:00|{SOME_ID}")})
    assert latest.status_code == 200 and latest.json()["data"] == crud.get(API).json()["data"]
    earliest = crud.get(API, params={"cursor": b64(f"0001-01-01T00:00:00-05:00|{SOME_ID}")})
    assert earliest.status_code == 200 and earliest.json()["data"] == []


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", API, b"{", 400),
    ("POST", API, b'{"title": 5}', 400),
    ("POST", API, b'{"colour": "red"}', 400),
    ("GET", API + "?limit=0", None, 400),
    ("GET", API + "?limit=abc", None, 400),
    ("GET", API + "?cursor=%%%", None, 400),
    ("GET", API + "/not-a-uuid", None, 404),
    ("GET", API + f"/{uuid.uuid4()}", None, 404),
    ("PATCH", API + f"/{uuid.uuid4()}", b'{"title": "x"}', 404),
    ("DELETE", API + f"/{uuid.uuid4()}", None, 404),
    ("POST", API + f"/{uuid.uuid4()}/messages", b'{"content": "hi"}', 404),
    ("GET", API + f"/{uuid.uuid4()}/stream", None, 404),
    ("POST", API + f"/{uuid.uuid4()}/messages/{uuid.uuid4()}/cancel", None, 404),
    ("GET", f"/api/v1/stream/{uuid.uuid4()}", None, 404),
    ("POST", "/api/v1/chat", b'{"message": ""}', 400),
    ("POST", "/api/v1/chat", b'{"message": "hi", "conversation_id": "nope"}', 404),
])
def test_bad_requests(crud: httpx.Client, method: str, path: str, body: bytes | None, status: int) -> None:
    response = crud.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == status


def test_bad_message_bodies_change_nothing(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    for body in (b'{"content": ""}', b'{"content": 3}', b'{"content": "hi", "max_tokens": 0}',
                 b'{"content": "hi", "stop": [""]}', b'{"content": "hi", "temperature": 9}', b"nope",
                 b'{"content": "hi", "seed": 99999999999999999999999}'):
        response = http.post(f"{API}/{conversation_id}/messages", content=body)
        assert response.status_code == 400, body
    assert messages_of(http, conversation_id) == []
    response = http.get(f"{API}/{conversation_id}/stream", headers={"Last-Event-ID": "abc"})
    assert response.status_code in (400, 404)


def test_another_users_conversation_does_not_exist(http: httpx.Client, server_url: str) -> None:
    conversation_id = new_conversation(http, "private")
    reply = http.post(f"{API}/{conversation_id}/messages", json={"content": "secret", "max_tokens": 4}).json()
    message_id = reply["message"]["id"]
    username, password = f"other-{uuid.uuid4().hex[:6]}", "other-password"
    assert http.post("/api/v1/users", json={"username": username, "password": password}).status_code == 201
    token = httpx.post(f"{server_url}/api/v1/auth/token",
                       data={"username": username, "password": password}).json()["access_token"]
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as other:
        assert all(c["id"] != conversation_id for c in other.get(API).json()["data"])
        for method, path, body in [
            ("GET", f"{API}/{conversation_id}", None),
            ("PATCH", f"{API}/{conversation_id}", {"title": "mine now"}),
            ("POST", f"{API}/{conversation_id}/messages", {"content": "hijack"}),
            ("GET", f"{API}/{conversation_id}/stream", None),
            ("GET", f"{API}/{conversation_id}/stream?message_id={message_id}", None),
            ("POST", f"{API}/{conversation_id}/messages/{message_id}/cancel", None),
            ("GET", f"/api/v1/stream/{conversation_id}", None),
            ("POST", "/api/v1/chat", {"message": "hijack", "conversation_id": conversation_id}),
            ("DELETE", f"{API}/{conversation_id}", None),
        ]:
            response = other.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.status_code)
    assert http.get(f"{API}/{conversation_id}").json()["title"] == "private"
    assert len(messages_of(http, conversation_id)) == 2


def test_resume_on_another_replica(http: httpx.Client, start_replica, server_database_url: str, redis_url: str,
                                   auth_headers: dict[str, str]) -> None:
    """Without sticky routing a resume can land on a replica that does not hold the reply: it says so (409) while
    the reply runs, and replays the stored reply once it has ended."""
    other = start_replica(server_database_url, redis_url)
    conversation_id = new_conversation(http)
    body = {"content": "Keep talking.", "stream": True, "max_tokens": 1500, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        SSEReader(response).next()
        elsewhere = httpx.get(f"{other}{API}/{conversation_id}/stream", params={"message_id": message_id},
                              headers={**auth_headers, "Last-Event-ID": "1"})
        assert elsewhere.status_code == 409 and "replica" in elsewhere.json()["error"]["message"]
        http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
    with httpx.stream("GET", f"{other}{API}/{conversation_id}/stream", params={"message_id": message_id},
                      headers=auth_headers) as replayed:
        events = SSEReader(replayed).rest()
    stored = wait_for_status(http, conversation_id, message_id)
    assert [e.event for e in events] == ["message.completed"]
    assert events[0].data["replayed"] and events[0].data["content"] == stored["content"]


def test_a_reply_takes_the_same_generation_fields(http: httpx.Client) -> None:
    """One schema for chat and conversations: a choice constraint holds on the stored reply."""
    conversation_id = new_conversation(http)
    response = http.post(f"{API}/{conversation_id}/messages",
                         json={"content": "Pick one.", "max_tokens": 5,
                               "structured_outputs": {"choice": ["alpha", "beta"]}})
    assert response.status_code == 201, response.text
    assert response.json()["message"]["content"] in ("alpha", "beta")
