"""The seed's contract, kept beside the OpenAI one: its own test (request and assertion unchanged; only how it
reaches the app adapted: the real server over HTTP, with a key), the query-parameter form of its FastAPI
signature, its error bodies, and its stream route as a browser's EventSource.onmessage sees it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from loadtests.sse import iter_events


@pytest.fixture(scope="module")
def client(server_url: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, headers=auth_headers, timeout=120) as http:
        yield http


def test_chat(client: httpx.Client) -> None:
    """The seed's test."""
    response = client.post("/api/v1/chat", json={"message": "Hello"})
    assert response.status_code == 200


def test_message_as_a_query_parameter(client: httpx.Client) -> None:
    response = client.post("/api/v1/chat", params={"message": "Hello"})
    assert response.status_code == 200 and response.json()["reply"] == response.json()["message"]["content"]


def test_error_bodies_carry_the_seeds_fields_on_api_v1(client: httpx.Client) -> None:
    missing = client.get(f"/api/v1/conversations/{uuid.uuid4()}")
    body = missing.json()
    assert (body["code"], body["path"], body["type"]) == (404, missing.request.url.path, "not_found_error")
    assert body["message"] and "param" in body and body["error"]["code"] == 404
    openai_route = client.post("/v1/chat/completions", json={"messages": []}).json()
    assert set(openai_route) == {"error"}  # the OpenAI routes keep the envelope the SDKs read


def plain_events(response: httpx.Response) -> list[dict]:
    """What EventSource.onmessage receives: events without a name (a named event would not reach it)."""
    events = list(iter_events(response.iter_lines()))
    assert all(event.event is None for event in events)
    return [event.json() for event in events]


def test_stream_route_reaches_onmessage_and_replays_a_finished_reply(client: httpx.Client) -> None:
    started = client.post("/api/v1/chat", json={"message": "Say hi"}).json()
    conversation_id = started["conversation_id"]
    begun = time.monotonic()
    with client.stream("GET", f"/api/v1/stream/{conversation_id}") as response:
        events = plain_events(response)
    assert time.monotonic() - begun < 10  # the finished reply is replayed at once, not awaited
    assert events[-1]["type"] == "message.completed" and events[-1]["message_id"] == started["message"]["id"]
    with client.stream("POST", "/api/v1/chat", json={"message": "Count to three", "conversation_id": conversation_id,
                                                    "stream": True}) as response:
        streamed = plain_events(response)
    deltas = [e for e in streamed if e["type"] == "message.delta"]
    assert deltas and streamed[-1]["type"] == "message.completed"
