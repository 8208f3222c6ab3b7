"""A CodeFace server killed twice: SIGKILL of the server mid-reply (and mid background response), then a restart
that reconciles the reply and the background response it left in progress and still holds the Responses API's
stored responses and conversations; then kill -9 of its engine core process under running streams."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import asyncpg
import httpx
import psutil
import pytest

from loadtests.sse import aiter_events

from faults.conftest import admin_key, long_chat, readyz, spawn
from servers import EARLY, SpawnedServer

API = "/api/v1/conversations"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
SHORT = {"temperature": 0, "max_output_tokens": 4}
STALE_AFTER_S = 10


def build_first(request: pytest.FixtureRequest) -> SpawnedServer:
    """The first server, on a database of its own in the suite's Postgres and the suite's Redis (nothing here breaks
    either; the fault group's own Postgres and Redis are for the tests that do, and are down in turns while this
    server may be starting early)."""
    database_url = request.getfixturevalue("new_postgres_database")("server_b")
    folder = request.getfixturevalue("tmp_path_factory").mktemp("server-b")
    return spawn(folder, database_url, request.getfixturevalue("redis_url"), reply_stale_after_s=STALE_AFTER_S,
                 conversation_flush_s=0.5)


first_server = EARLY.fixture("first_server", build_first)


@pytest.fixture(scope="module")
def database_url(first_server: SpawnedServer) -> str:
    return first_server.database_url


@pytest.fixture(scope="module")
def key(database_url: str, redis_url: str) -> str:
    return admin_key(database_url, redis_url)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[SpawnedServer]]:
    started: list[SpawnedServer] = []
    yield started
    for server in started:
        server.stop_soon()


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def first_deltas(http: httpx.AsyncClient, conversation_id: str, count: int) -> tuple[str, str]:
    """Starts a long streamed reply and reads `count` deltas; returns (message id, text so far)."""
    body = {"content": "Tell me a long story.", "stream": True, "max_tokens": 400, "ignore_eos": True}
    text = []
    async with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        async for event in aiter_events(response.aiter_lines()):
            text.append(event.json()["delta"])
            if len(text) == count:
                break
    return message_id, "".join(text)


@pytest.fixture(scope="module")
def kept_before_the_kill(first_server: SpawnedServer, key: str) -> dict[str, dict]:
    """A stored response, and a conversation that a response was appended to, made on the server about to be
    killed (/v1/responses and /v1/conversations)."""
    with httpx.Client(base_url=first_server.url, headers=headers(key), timeout=120) as http:
        response = http.post(RESPONSES, json={"input": "My favourite fruit is the pineapple.", **SHORT})
        conversation = http.post("/v1/conversations", json={"metadata": {"kept": "yes"}})
        assert response.status_code == conversation.status_code == 200, (response.text, conversation.text)
        conversation_id = conversation.json()["id"]
        appended = http.post(RESPONSES, json={"input": "Hello.", "conversation": conversation_id, **SHORT})
        assert appended.status_code == 200, appended.text
        items = http.get(f"/v1/conversations/{conversation_id}/items", params={"order": "asc"})
        return {"response": response.json(), "conversation": conversation.json(), "items": items.json()}


async def background_deltas(http: httpx.AsyncClient, count: int) -> dict[str, str]:
    """Starts a long background response with stream, reads `count` text deltas, and drops the connection (the
    response goes on); returns its id and the text so far."""
    body = {"input": "Tell me a long story.", "background": True, "stream": True, "max_output_tokens": 400,
            "ignore_eos": True}
    text: list[str] = []
    response_id = ""
    async with http.stream("POST", RESPONSES, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for event in aiter_events(response.aiter_lines()):
            data = event.json()
            response_id = response_id or data["response"]["id"]
            if data["type"] == "response.output_text.delta":
                text.append(data["delta"])
                if len(text) == count:
                    break
    return {"id": response_id, "streamed": "".join(text)}


@pytest.fixture(scope="module")
def background_before_the_kill() -> dict[str, str]:
    """A background response running when the server is killed (filled by the kill test)."""
    return {}


def test_sigkill_mid_reply_then_restart_reconciles(first_server: SpawnedServer, key: str,
                                                    servers: list[SpawnedServer],
                                                    kept_before_the_kill: dict[str, dict],
                                                    background_before_the_kill: dict[str, str],
                                                    measured: Callable[[str, object], None]) -> None:
    """The reply a killed server left in progress is stored `interrupted` with the text it had flushed, within
    STALE_AFTER_S of the restart; the conversation then accepts a new post. (Responses API state is made before
    the kill: kept_before_the_kill.)"""
    first = first_server
    with httpx.Client(base_url=first.url, headers=headers(key), timeout=120) as http:
        conversation_id = http.post(API, json={}).json()["id"]

    killed: list[float] = []

    async def stream_then_kill() -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=first.url, headers=headers(key), timeout=120) as http:
            background_before_the_kill.update(await background_deltas(http, 12))
            message_id, text = await first_deltas(http, conversation_id, 12)
            await asyncio.sleep(1.5)  # a flush (every 0.5 s) carries the text so far
            first.signal_group(signal.SIGKILL)  # as a container runtime kills it: the engine processes too
            killed.append(time.monotonic())
            return message_id, text

    message_id, streamed = asyncio.run(stream_then_kill())
    first.wait(30)
    second = first.again().start()
    servers.append(second)
    restarted = time.monotonic()
    with httpx.Client(base_url=second.url, headers=headers(key), timeout=120) as http:
        while True:
            messages = http.get(f"{API}/{conversation_id}").json()["messages"]
            reply = next(m for m in messages if m["id"] == message_id)
            if reply["status"] != "in_progress" or time.monotonic() - restarted > STALE_AFTER_S + 15:
                break
            time.sleep(0.5)
        assert reply["status"] == "interrupted" and reply["content"].startswith(streamed)
        measured("reconciled, s after the kill / after the restart",
                 f"{time.monotonic() - killed[0]:.1f} / {time.monotonic() - restarted:.1f}")
        measured("streamed / kept characters", f"{len(streamed)} / {len(reply['content'])}")
        following = http.post(f"{API}/{conversation_id}/messages", json={"content": "Continue.", "max_tokens": 2})
        assert following.status_code == 201, following.text


def test_a_background_response_left_running_is_reconciled_incomplete(
        key: str, servers: list[SpawnedServer], background_before_the_kill: dict[str, str],
        measured: Callable[[str, object], None]) -> None:
    """The background response the killed server was generating: after the restart, within STALE_AFTER_S, it reads
    back incomplete (reason interrupted) with the text written before the kill, which starts with what was streamed;
    a fresh stream of it ends with that end; a chain from it is served."""
    response_id, streamed = background_before_the_kill["id"], background_before_the_kill["streamed"]
    assert streamed
    restarted = time.monotonic()
    with httpx.Client(base_url=servers[-1].url, headers=headers(key), timeout=120) as http:
        while (body := http.get(f"{RESPONSES}/{response_id}").json())["status"] in ("queued", "in_progress"):
            assert time.monotonic() - restarted < STALE_AFTER_S + 15, body["status"]
            time.sleep(0.5)
        assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "interrupted"}
        text = "".join(part["text"] for item in body["output"] if item["type"] == "message"
                       for part in item["content"])
        assert text.startswith(streamed), (text, streamed)
        measured("background response reconciled, s after this check began / streamed, kept characters",
                 f"{time.monotonic() - restarted:.1f} / {len(streamed)}, {len(text)}")
        with http.stream("GET", f"{RESPONSES}/{response_id}", params={"stream": "true"}) as replay:
            events = [json.loads(line[len("data: "):]) for line in replay.iter_lines() if line.startswith("data: ")]
        assert [event["type"] for event in events] == ["response.incomplete"] and events[0]["response"] == body
        chained = http.post(RESPONSES, json={"input": "Go on.", "previous_response_id": response_id, **SHORT})
        assert chained.status_code == 200, chained.text


def test_responses_and_conversations_survive_the_restart(key: str, servers: list[SpawnedServer],
                                                        kept_before_the_kill: dict[str, dict]) -> None:
    """After the SIGKILL and restart above: the stored response reads back the same, the conversation and its items
    too, and previous_response_id chains from the response stored before the kill."""
    kept = kept_before_the_kill
    response_id, conversation_id = kept["response"]["id"], kept["conversation"]["id"]
    with httpx.Client(base_url=servers[-1].url, headers=headers(key), timeout=120) as http:
        assert http.get(f"{RESPONSES}/{response_id}").json() == kept["response"]
        assert http.get(f"/v1/conversations/{conversation_id}").json() == kept["conversation"]
        assert http.get(f"/v1/conversations/{conversation_id}/items", params={"order": "asc"}).json() == kept["items"]
        chained = http.post(RESPONSES, json={"input": "Which fruit?", "previous_response_id": response_id, **SHORT})
        assert chained.status_code == 200, chained.text
        usage = kept["response"]["usage"]
        assert chained.json()["usage"]["input_tokens"] > usage["input_tokens"] + usage["output_tokens"]


def test_engine_core_killed_under_streams(key: str, servers: list[SpawnedServer], database_url: str,
                                          measured: Callable[[str, object], None]) -> None:
    """kill -9 of the engine core: error events and [DONE] on the chat streams, 503s, replies stored failed,
    /readyz 503 within a second, and the process exits non-zero so that its supervisor restarts it."""
    server = servers[-1]
    asyncio.run(_kill_engine(server, key, database_url, measured))


async def _kill_engine(server: SpawnedServer, key: str, database_url: str,
                       measured: Callable[[str, object], None]) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=headers(key), timeout=120) as http:
        conversation_id = (await http.post(API, json={})).json()["id"]
        started = [asyncio.Event() for _ in range(5)]
        chats = [asyncio.create_task(long_chat(http, s)) for s in started[:4]]
        reply = asyncio.create_task(reply_until_end(http, conversation_id, started[4]))
        await asyncio.gather(*(s.wait() for s in started))
        engine_cores = [child for child in psutil.Process(server.pid).children(recursive=True)
                        if "EngineCore" in " ".join(child.cmdline()) or child.name().startswith("VLLM::Engine")]
        assert engine_cores, [c.name() for c in psutil.Process(server.pid).children(recursive=True)]
        for core in engine_cores:
            core.kill()
        killed = time.monotonic()
        while readyz(server.url) != 503:
            assert time.monotonic() - killed < 1.0, "/readyz still 200 a second after the engine died"
            await asyncio.sleep(0.05)
        measured("/readyz 503, s after the kill", f"{time.monotonic() - killed:.2f}")
        refused = await http.post(CHAT, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert refused.status_code == 503
        assert [await chat for chat in chats] == ["error"] * 4
        message_id, final = await reply
        assert final["status"] == "failed"
    exit_code = await asyncio.to_thread(server.wait, 60)
    assert exit_code != 0
    measured("process exit, s after the kill / code", f"{time.monotonic() - killed:.1f} / {exit_code}")
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        row = await connection.fetchrow("SELECT status FROM messages WHERE id = $1", uuid.UUID(message_id))
    finally:
        await connection.close()
    assert row["status"] == "failed"


async def reply_until_end(http: httpx.AsyncClient, conversation_id: str,
                          started: asyncio.Event) -> tuple[str, dict]:
    body = {"content": "Go on and on.", "stream": True, "max_tokens": 400, "ignore_eos": True}
    final: dict = {}
    async with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        message_id = response.headers["x-message-id"]
        async for event in aiter_events(response.aiter_lines()):
            if event.event == "message.delta":
                started.set()
            else:
                final = event.json()
    return message_id, final
