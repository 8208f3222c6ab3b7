"""Admission over the ASGI transport with FakeEngine and auth on: one user's share of admission (in sequences), the
log-probability cap per request, refusals before any rendering, and a conversation's turn committed before the
engine sees its reply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine import PreparedRequest, StepOutput
from server.generation.generator import MAX_LOGPROB_ENTRIES
from storage.models import MessageStatus
from storage.repository import Messages

from fast.conftest import UNLIMITED, make_app
from fast.fake_engine import FakeEngine
from support.openai_envelope import CHAT, HELLO, assert_envelope

COMPLETIONS = "/v1/completions"
# A generation that stays in flight for a second or so: 50 tokens at 20 ms each.
HELD = {"messages": HELLO, "max_tokens": 50, "ignore_eos": True}


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_one_user_cannot_fill_admission(auth_client) -> None:
    """Admission takes 8 sequences, a user at most 4: the heavy user's second n=4 request gets 429 naming the
    setting (it would have taken the server's last 4), and another user still gets in."""
    engine = FakeEngine(token_delay_s=0.02)
    client, headers = await auth_client(engine, {"heavy": UNLIMITED, "light": UNLIMITED},
                                  max_inflight_generations=8, max_inflight_sequences_per_user=4)
    async with client as http:
        held = asyncio.create_task(http.post(CHAT, json={**HELD, "n": 4}, headers=headers["heavy"]))
        await until(lambda: engine.in_flight == 1)
        refused = await http.post(CHAT, json={**HELD, "n": 4}, headers=headers["heavy"])
        error = assert_envelope(refused, 429)
        assert "max_inflight_sequences_per_user" in str(error["message"]) and error["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
        other = await http.post(CHAT, json={**HELD, "n": 4}, headers=headers["light"])
        assert other.status_code == 200, other.text
        assert (await held).status_code == 200
        # The share is given back when the generation ends.
        assert (await http.post(CHAT, json={**HELD, "n": 4}, headers=headers["heavy"])).status_code == 200


async def test_server_full_is_still_503_for_everyone(auth_client) -> None:
    engine = FakeEngine(token_delay_s=0.02)
    client, headers = await auth_client(engine, {"a": UNLIMITED, "b": UNLIMITED},
                                  max_inflight_generations=4, max_inflight_sequences_per_user=4)
    async with client as http:
        held = asyncio.create_task(http.post(CHAT, json={**HELD, "n": 4}, headers=headers["a"]))
        await until(lambda: engine.in_flight == 1)
        assert_envelope(await http.post(CHAT, json=HELD, headers=headers["b"]), 503)
        await held


async def test_logprobs_are_capped_per_request(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    """20 prompts x 1000 tokens x 21 alternatives: each prompt is under the cap, the request is 2x over it."""
    body = {"prompt": [f"p{i}" for i in range(20)], "max_tokens": 1000, "logprobs": 20}
    assert 1000 * 21 < MAX_LOGPROB_ENTRIES < 20 * 1000 * 21
    error = assert_envelope(await client.post(COMPLETIONS, json=body), 400, "logprobs")
    assert "number of prompts" in str(error["message"])
    assert engine.in_flight == 0
    ok = await client.post(COMPLETIONS, json={**body, "prompt": body["prompt"][:9], "max_tokens": 8})
    assert ok.status_code == 200, ok.text


async def test_over_the_limits_is_refused_before_rendering(auth_client) -> None:
    engine = FakeEngine()
    client, headers = await auth_client(engine, {"small": {**UNLIMITED, "tokens_per_minute": 100}},
                                  max_inflight_generations=4)
    async with client as http:
        # max_tokens x n alone is over the key's tokens per minute, whatever the prompt.
        assert_envelope(await http.post(CHAT, json={"messages": HELLO, "max_tokens": 60, "n": 2},
                                        headers=headers["small"]), 429)
        assert_envelope(await http.post(COMPLETIONS, json={"prompt": ["a", "b"], "max_tokens": 60},
                                        headers=headers["small"]), 429)
        engine.in_flight = 4  # the server is full
        assert_envelope(await http.post(CHAT, json={"messages": HELLO}, headers=headers["small"]), 503)
        assert_envelope(await http.post(COMPLETIONS, json={"prompt": "a"}, headers=headers["small"]), 503)
        assert engine.prepared == []  # nothing was rendered


async def test_tokenize_caps_messages_as_chat_does(client_for, engine: FakeEngine) -> None:
    from server.apis.openai.chat_completions.protocol import MAX_MESSAGES

    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(MAX_MESSAGES + 1)]
    async with client_for(engine, max_body_bytes=1 << 20) as http:
        assert_envelope(await http.post("/tokenize", json={"messages": turns}), 400, "messages")
        assert (await http.post("/tokenize", json={"messages": turns[:MAX_MESSAGES - 1]})).status_code == 200


class CheckingEngine(FakeEngine):
    """Records, when the engine is handed a reply, whether that reply's row is already committed."""

    def __init__(self) -> None:
        super().__init__()
        self.database: Any = None
        self.conversation_id: uuid.UUID | None = None
        self.stored_at_submit: list[MessageStatus | None] = []

    async def submit(self, prepared: PreparedRequest) -> AsyncIterator[StepOutput]:
        assert self.conversation_id is not None
        async with self.database.session() as session:
            reply = await Messages(session).get(self.conversation_id, uuid.UUID(prepared.request_id))
        self.stored_at_submit.append(reply.status if reply is not None else None)
        return await super().submit(prepared)


@pytest.mark.parametrize("fairness", ["off", "on"])
async def test_reply_row_is_committed_before_the_engine_sees_it(migrated_database: Path, tmp_path: Path,
                                                                fairness: str) -> None:
    engine = CheckingEngine()
    app = make_app(migrated_database, tmp_path, engine, fairness=fairness, scheduling_policy="priority",
                   max_num_seqs=16)
    engine.database = app.state.services.database
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fast.test") as http:
        created = await http.post("/api/v1/conversations", json={"title": "t"})
        engine.conversation_id = uuid.UUID(created.json()["id"])
        posted = await http.post(f"/api/v1/conversations/{engine.conversation_id}/messages",
                                 json={"content": "Hi", "max_tokens": 3, "ignore_eos": True})
        assert posted.status_code == 201, posted.text
    assert engine.stored_at_submit == [MessageStatus.IN_PROGRESS]


async def test_a_conversation_post_over_capacity_renders_nothing(client_for, engine: FakeEngine) -> None:
    async with client_for(engine, max_inflight_generations=2) as http:
        conversation_id = (await http.post("/api/v1/conversations", json={"title": "t"})).json()["id"]
        engine.in_flight = 2  # the server is full
        refused = await http.post(f"/api/v1/conversations/{conversation_id}/messages", json={"content": "Hi"})
    assert refused.status_code == 503 and engine.prepared == []


async def test_api_processes_count_one_users_share_together() -> None:
    """Two API processes' admissions (one storage, one server id): the user's whole share is admitted in one
    process, and its next sequence is refused in the other; another server's count is its own."""
    from server.generation.generator import Admission
    from server.security.auth import Principal
    from server.security.ratelimit import LimitExceeded, Quota, RateLimits

    limits = RateLimits("memory://", fail_open=False, key_prefix=f"test-{uuid.uuid4().hex[:8]}")
    engine = FakeEngine()
    first, second = (Admission(engine, limits, max_inflight=8, max_per_tenant=4, server_id="this-server")
                     for _ in range(2))
    user = Principal(uuid.uuid4(), is_admin=False, quota=Quota(None, None, None), key_id=uuid.uuid4())
    whole, _ = await first.admit(user, tokens=10, choices=4)
    with pytest.raises(LimitExceeded) as refused:
        await second.admit(user, tokens=10, choices=1)
    assert refused.value.limit == "max_inflight_sequences_per_user"
    assert "at most 4 on this server" in str(refused.value) and second.admitted == 0
    elsewhere = Admission(engine, limits, max_inflight=8, max_per_tenant=4, server_id="another-server")
    assert (await elsewhere.admit(user, tokens=10, choices=4))[0] is not None
    assert whole is not None
    await whole.settle(10)
    first.release(user.tenant, 4)
    assert (await second.admit(user, tokens=10, choices=4))[0] is not None  # all four came back
