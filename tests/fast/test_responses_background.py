"""Background responses over the real app with FakeEngine (a named test double) and SQLite: the queued answer, the
row while it runs and at its end, the stream numbered event id = sequence_number + 1 and resumed after any
sequence_number, the replay from storage once the buffer is gone, cancel (and its OpenAI semantics), the
reconciler of rows a dead replica left running, and the pure rules (replayed, after_id, no grace clock)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from server.apis.openai.responses.background import after_id, framed, replayed
from server.conversations.listeners import Listeners
from server.conversations.registry import Registry
from server.exceptions import Conflict, InvalidRequest
from server.state import AppServices
from storage.models import StoredResponse, User, utcnow

from fast.conftest import make_app
from fast.fake_engine import FakeEngine

RESPONSES = "/v1/responses"
BODY: dict[str, Any] = {"input": "Hi", "max_output_tokens": 8, "background": True}


@pytest.fixture
def slow_engine() -> FakeEngine:
    return FakeEngine(token_delay_s=0.05)


@pytest.fixture
def app(migrated_database: Path, tmp_path: Path, slow_engine: FakeEngine) -> Starlette:
    return make_app(migrated_database, tmp_path, slow_engine, conversation_flush_s=0.05)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test",
                                 timeout=10) as http:
        yield http


def services(app: Starlette) -> AppServices:
    held: AppServices = app.state.services
    return held


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


async def until_ended(client: httpx.AsyncClient, response_id: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = (await client.get(f"{RESPONSES}/{response_id}")).json()
        if body["status"] not in ("queued", "in_progress"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the background response never ended")


async def until_some_output(client: httpx.AsyncClient, response_id: str) -> None:
    for _ in range(100):
        if output_text((await client.get(f"{RESPONSES}/{response_id}")).json()):
            return
        await asyncio.sleep(0.03)
    raise AssertionError("no output was written")


def output_text(body: dict[str, Any]) -> str:
    return "".join(part["text"] for item in body["output"] if item["type"] == "message"
                   for part in item["content"])


async def test_background_answers_queued_then_runs_to_its_stored_end(client: httpx.AsyncClient) -> None:
    created = await client.post(RESPONSES, json=BODY)
    assert created.status_code == 200, created.text
    head = created.json()
    assert head["status"] == "queued" and head["background"] is True and head["usage"] is None
    # The row exists from the start (any replica retrieves it), and shows the output so far while it runs.
    seen = []
    for _ in range(100):
        body = (await client.get(f"{RESPONSES}/{head['id']}")).json()
        seen.append(body["status"])
        if body["status"] == "in_progress" and output_text(body):
            break
        await asyncio.sleep(0.03)
    assert "in_progress" in seen and output_text(body)
    final = await until_ended(client, head["id"])
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert output_text(final) == "".join(f"w{i} " for i in range(8))
    assert final["usage"]["output_tokens"] == 8
    items = (await client.get(f"{RESPONSES}/{head['id']}/input_items")).json()
    assert [item["type"] for item in items["data"]] == ["message"]


async def test_a_conversation_gets_the_turn_when_the_response_ends(client: httpx.AsyncClient) -> None:
    conversation = (await client.post("/v1/conversations", json={})).json()["id"]
    head = (await client.post(RESPONSES, json={**BODY, "conversation": conversation})).json()
    assert (await client.get(f"/v1/conversations/{conversation}/items")).json()["data"] == []
    final = await until_ended(client, head["id"])
    # The row's end and the conversation's turn are one transaction: once it reads ended, the items are there.
    items = (await client.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()
    assert [item["role"] for item in items["data"]] == ["user", "assistant"]
    assert items["data"][1]["id"] == final["output"][0]["id"]
    assert items["data"][1]["content"][0]["text"] == output_text(final)


async def test_stream_and_resume_after_any_sequence_number(client: httpx.AsyncClient) -> None:
    streamed = events((await client.post(RESPONSES, json={**BODY, "stream": True})).text)
    numbers = [event["sequence_number"] for event in streamed]
    assert numbers == list(range(len(streamed)))
    assert streamed[0]["type"] == "response.created" and streamed[-1]["type"] == "response.incomplete"
    response_id = streamed[0]["response"]["id"]
    deltas = "".join(event["delta"] for event in streamed if event["type"] == "response.output_text.delta")
    assert deltas == output_text(streamed[-1]["response"])
    for after in (0, 3, len(streamed) - 2):
        resumed = events((await client.get(f"{RESPONSES}/{response_id}",
                                           params={"stream": "true", "starting_after": after})).text)
        assert resumed == streamed[after + 1:]
    whole = events((await client.get(f"{RESPONSES}/{response_id}", params={"stream": "true"})).text)
    assert whole == streamed
    past = await client.get(f"{RESPONSES}/{response_id}", params={"stream": "true", "starting_after": len(streamed)})
    assert past.status_code == 400 and past.json()["error"]["param"] == "starting_after"
    alone = await client.get(f"{RESPONSES}/{response_id}", params={"starting_after": 1})
    assert alone.status_code == 400 and alone.json()["error"]["param"] == "starting_after"


async def test_replay_from_storage_once_the_buffer_is_gone(app: Starlette, client: httpx.AsyncClient) -> None:
    streamed = events((await client.post(RESPONSES, json={**BODY, "stream": True})).text)
    response_id, last = streamed[0]["response"]["id"], streamed[-1]["sequence_number"]
    services(app).registry.runs.clear()  # evicted, as after the retention
    replay = events((await client.get(f"{RESPONSES}/{response_id}", params={"stream": "true"})).text)
    assert replay == [streamed[-1]]
    assert events((await client.get(f"{RESPONSES}/{response_id}",
                                    params={"stream": "true", "starting_after": 2})).text) == [streamed[-1]]
    assert events((await client.get(f"{RESPONSES}/{response_id}",
                                    params={"stream": "true", "starting_after": last})).text) == []
    past = await client.get(f"{RESPONSES}/{response_id}", params={"stream": "true", "starting_after": last + 1})
    assert past.status_code == 400 and past.json()["error"]["param"] == "starting_after"


async def test_cancel_keeps_the_output_so_far_and_is_idempotent(client: httpx.AsyncClient) -> None:
    head = (await client.post(RESPONSES, json={**BODY, "max_output_tokens": 200, "ignore_eos": True})).json()
    await until_some_output(client, head["id"])
    cancelled = await client.post(f"{RESPONSES}/{head['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and output_text(body).startswith("w0 ")
    assert (await client.get(f"{RESPONSES}/{head['id']}")).json() == body
    assert (await client.post(f"{RESPONSES}/{head['id']}/cancel")).json() == body
    stream = events((await client.get(f"{RESPONSES}/{head['id']}", params={"stream": "true"})).text)
    assert stream[-1]["type"] == "response.cancelled" and stream[-1]["response"] == body


async def test_cancel_of_a_foreground_or_unknown_response(client: httpx.AsyncClient) -> None:
    foreground = (await client.post(RESPONSES, json={"input": "Hi", "max_output_tokens": 2})).json()
    refused = await client.post(f"{RESPONSES}/{foreground['id']}/cancel")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_id"
    unknown = await client.post(f"{RESPONSES}/resp_{'0' * 32}/cancel")
    assert unknown.status_code == 404
    assert (await client.get(f"{RESPONSES}/{foreground['id']}", params={"stream": "true"})).status_code == 400


async def test_a_chain_through_a_running_response_is_a_409(client: httpx.AsyncClient) -> None:
    head = (await client.post(RESPONSES, json={**BODY, "max_output_tokens": 200, "ignore_eos": True})).json()
    chained = await client.post(RESPONSES, json={"input": "Next", "previous_response_id": head["id"]})
    assert chained.status_code == 409 and chained.json()["error"]["param"] == "previous_response_id"
    await until_some_output(client, head["id"])
    await client.post(f"{RESPONSES}/{head['id']}/cancel")
    chained = await client.post(RESPONSES, json={"input": "Next", "previous_response_id": head["id"],
                                                 "max_output_tokens": 2})
    assert chained.status_code == 200, chained.text


async def test_the_reconciler_ends_a_dead_replicas_rows_but_not_its_own(app: Starlette,
                                                                        client: httpx.AsyncClient) -> None:
    own = (await client.post(RESPONSES, json={**BODY, "max_output_tokens": 200, "ignore_eos": True})).json()
    dead_id = f"resp_{uuid.uuid4().hex}"
    held = services(app)
    async with held.database.session() as session:
        owner = (await session.get(StoredResponse, own["id"])).owner_id  # type: ignore[union-attr]
        assert await session.get(User, owner) is not None
        old = utcnow() - timedelta(seconds=held.settings.reply_stale_after_s * 2)
        body = {**own, "id": dead_id, "status": "in_progress",
                "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
                            "content": [{"type": "output_text", "text": "so far", "annotations": []}]}]}
        session.add(StoredResponse(id=dead_id, owner_id=owner, status="in_progress", created_at=old, updated_at=old,
                                   expires_at=utcnow() + timedelta(days=1), body=body, input_items=[]))
        # The own running response's heartbeat looks stale too: it is excluded as this replica's own.
        own_row = await session.get(StoredResponse, own["id"])
        assert own_row is not None
        own_row.updated_at = old
        await session.commit()
    # Not while the database has just come back: live replicas' heartbeats get the time to land first.
    reachable_since = held.conversations._reachable_since
    held.conversations._reachable_since = None
    assert await held.background_responses.reconcile() == 0
    held.conversations._reachable_since = reachable_since
    assert await held.background_responses.reconcile() == 1
    dead = (await client.get(f"{RESPONSES}/{dead_id}")).json()
    assert dead["status"] == "incomplete" and dead["incomplete_details"] == {"reason": "interrupted"}
    assert dead["output"][0]["status"] == "incomplete" and output_text(dead) == "so far"
    assert (await client.get(f"{RESPONSES}/{own['id']}")).json()["status"] in ("queued", "in_progress")
    # Its end was never streamed: a fresh stream gets the end; a resume after some event cannot be served.
    assert [e["type"] for e in events((await client.get(f"{RESPONSES}/{dead_id}",
                                                        params={"stream": "true"})).text)] == ["response.incomplete"]
    lost = await client.get(f"{RESPONSES}/{dead_id}", params={"stream": "true", "starting_after": 3})
    assert lost.status_code == 409
    await client.post(f"{RESPONSES}/{own['id']}/cancel")


def test_replayed_never_reuses_a_number_the_client_saw() -> None:
    body = {"status": "completed", "id": "resp_x"}
    assert replayed(body, 9, None) == replayed(body, 9, 4) == [framed("response.completed", {"response": body})(10)]
    assert b'"sequence_number":9' in replayed(body, 9, 4)[0]
    assert replayed(body, 9, 9) == []
    with pytest.raises(InvalidRequest):
        replayed(body, 9, 10)
    with pytest.raises(Conflict):
        replayed({"status": "incomplete"}, None, 0)
    assert after_id(None) == 0 and after_id(0) == 1 and after_id(41) == 42


async def test_a_background_run_outlives_the_grace_clock() -> None:
    """A Registry with a short grace period: a run without listeners is cancelled, a background one is not."""
    registry = Registry(0.05, Listeners(heartbeat_s=1, idle_timeout_s=1, max_total=10, max_per_caller=10,
                                       idle_heartbeat_s=1))
    release = asyncio.Event()

    async def produce(run: Any) -> None:
        await release.wait()
        await run.publish_built(framed("response.completed", {}), final=True)

    plain = registry.start(registry.new_run(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()), produce)
    background = registry.new_run(uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
    background.background = True
    registry.start(background, produce)
    await asyncio.sleep(0.2)
    assert plain.task is not None and plain.task.cancelled()
    release.set()
    await background.wait()
    assert background.done and background.last_id == 1 and not background.cancel_requested
    assert b'"sequence_number":0' in background.events[0][next(iter(background.events[0]))]
