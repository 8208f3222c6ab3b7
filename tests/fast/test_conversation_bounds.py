"""Conversation bounds with FakeEngine on the real app and SQLite: a post reads only what its prompt could hold, a
conversation's size is capped, and a cancel that races the reply's own end answers with the reply as it ended."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from fast.conftest import make_app
from fast.fake_engine import FakeEngine

API = "/api/v1/conversations"


async def new_conversation(http: httpx.AsyncClient) -> str:
    response = await http.post(API, json={})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_a_post_reads_only_what_its_prompt_could_hold(migrated_database: Path, tmp_path: Path) -> None:
    """3,000 stored messages, a 200-token context: the post loads at most the 200 newest (each message takes a
    token at least), not the 3,000, and counts the rest as dropped."""
    from storage.models import Message, MessageRole

    app = make_app(migrated_database, tmp_path, FakeEngine(max_model_len=200))
    database = app.state.services.database
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test") as http:
        conversation_id = await new_conversation(http)
        async with database.session() as session:
            session.add_all(Message(conversation_id=uuid.UUID(conversation_id), seq=seq, content=f"turn {seq}",
                                    role=MessageRole.USER if seq % 2 else MessageRole.ASSISTANT)
                            for seq in range(1, 3001))
            await session.commit()
        loaded: list[Any] = []
        listener: Callable[..., None] = lambda target, _context: loaded.append(target)  # noqa: E731
        event.listen(Message, "load", listener)
        try:
            response = await http.post(f"{API}/{conversation_id}/messages", json={"content": "Hi", "max_tokens": 4})
        finally:
            event.remove(Message, "load", listener)
    assert response.status_code == 201, response.text
    assert len(loaded) <= 200 + 2, len(loaded)  # the window, then the stored pair for the answer
    assert int(response.headers["x-dropped-turns"]) >= 3000 - 200


async def test_a_full_conversation_refuses_a_post(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async with client_for(FakeEngine(), conversation_max_messages=4) as http:
        conversation_id = await new_conversation(http)
        for _ in range(2):
            assert (await http.post(f"{API}/{conversation_id}/messages", json={"content": "Hi"})).status_code == 201
        full = await http.post(f"{API}/{conversation_id}/messages", json={"content": "Hi"})
        assert full.status_code == 409 and "full" in full.json()["message"], full.text
        assert len((await http.get(f"{API}/{conversation_id}")).json()["messages"]) == 4
    async with client_for(FakeEngine(), conversation_max_bytes=100) as http:
        conversation_id = await new_conversation(http)
        first = await http.post(f"{API}/{conversation_id}/messages", json={"content": "x" * 60})
        assert first.status_code == 201, first.text
        full = await http.post(f"{API}/{conversation_id}/messages", json={"content": "y" * 60})
        assert full.status_code == 409 and "full" in full.json()["message"], full.text


async def test_a_cancel_that_races_the_end_answers_with_the_reply_as_it_ended(migrated_database: Path,
                                                                             tmp_path: Path) -> None:
    """The race made deterministic: the reply has finished generating and its final write is held back when the
    cancel arrives. The cancel answers once the write has landed, with the reply as it ended, not in_progress."""
    app = make_app(migrated_database, tmp_path, FakeEngine())
    writer = app.state.services.conversations.writer
    finish = writer._finish
    past_generation, release = asyncio.Event(), asyncio.Event()

    async def held_finish(*args: Any) -> None:
        past_generation.set()
        await release.wait()
        await finish(*args)

    writer._finish = held_finish
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test",
                                 timeout=30) as http:
        conversation_id = await new_conversation(http)
        posted = asyncio.create_task(http.post(f"{API}/{conversation_id}/messages",
                                               json={"content": "Hi", "max_tokens": 3, "ignore_eos": True}))
        await asyncio.wait_for(past_generation.wait(), 10)
        reply_id = (await http.get(f"{API}/{conversation_id}")).json()["messages"][1]["id"]
        asyncio.get_running_loop().call_later(0.3, release.set)
        cancelled = await http.post(f"{API}/{conversation_id}/messages/{reply_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert (cancelled.json()["status"], cancelled.json()["content"]) == ("length", "w0 w1 w2 ")
        assert (await posted).status_code == 201
