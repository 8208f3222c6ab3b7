"""Background responses end to end (real server, real CPU engine, real model, Postgres, Redis) through the official
openai SDK: create then poll retrieve until done; create with stream, drop the connection after a few events, and
resume with retrieve(stream=True, starting_after=N) with no gap or duplicate; cancel mid-generation; starting_after
past the end; another user's id. Then with a second replica on the same Postgres and Redis (no engine of its own):
a response generated here resumes there, and one is cancelled from there."""

from __future__ import annotations

import time
import uuid
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from conftest import server_settings, user_with_key

LONG: dict[str, Any] = {"temperature": 0, "max_output_tokens": 200, "extra_body": {"ignore_eos": True}}
SHORT: dict[str, Any] = {"temperature": 0, "max_output_tokens": 24}
RUNNING = ("queued", "in_progress")


@pytest.fixture(scope="module")
def other(start_replica, server_database_url: str, redis_url: str) -> str:
    """A second replica: same Postgres, same Redis, shared reply streams, no engine."""
    return start_replica(server_database_url, redis_url, reply_streams_url=redis_url)


@pytest.fixture(scope="module")
def on_other(other: str, admin_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{other}/v1", api_key=admin_key, max_retries=0, timeout=120)


def until_done(client: openai.OpenAI, response_id: str, timeout_s: float = 120) -> Response:
    deadline = time.monotonic() + timeout_s
    while (response := client.responses.retrieve(response_id)).status in RUNNING:
        assert time.monotonic() < deadline, "the background response never ended"
        time.sleep(0.2)
    return response


def until_some_output(client: openai.OpenAI, response_id: str) -> str:
    """Polls until the row shows output so far (its writer flushes it while it runs)."""
    deadline = time.monotonic() + 60
    while not (text := client.responses.retrieve(response_id).output_text):
        assert time.monotonic() < deadline, "no output was written while the response ran"
        time.sleep(0.1)
    return text


def deltas(events: list[Any]) -> str:
    return "".join(event.delta for event in events if event.type == "response.output_text.delta")


def test_create_then_poll_until_done(client: openai.OpenAI, model_name: str) -> None:
    created = client.responses.create(model=model_name, input="Name three colours.", background=True, **SHORT)
    assert created.status in RUNNING and created.background is True and created.output == []
    done = until_done(client, created.id)
    Response.model_validate(done.model_dump())
    assert done.status in ("completed", "incomplete") and done.output_text.strip()
    assert done.usage is not None and 0 < done.usage.output_tokens <= 24
    foreground = client.responses.create(model=model_name, input="Name three colours.", **SHORT)
    assert foreground.output_text == done.output_text  # greedy: the same text as in the foreground


def resume_after_a_drop(client: openai.OpenAI, resumer: openai.OpenAI, model_name: str) -> None:
    stream = client.responses.create(model=model_name, input="Tell me a long story.", background=True,
                                     stream=True, temperature=0, max_output_tokens=60,
                                     extra_body={"ignore_eos": True})
    first = []
    for event in stream:
        first.append(event)
        if len(first) == 6:
            break
    stream.close()  # the connection drops; the generation goes on
    response_id = first[0].response.id  # type: ignore[union-attr]
    last = first[-1].sequence_number
    rest = list(resumer.responses.retrieve(response_id, stream=True, starting_after=last))
    numbers = [event.sequence_number for event in first + rest]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate
    assert rest[-1].type == "response.incomplete"
    final = rest[-1].response  # type: ignore[union-attr]
    assert deltas(first + rest) == final.output_text and final.usage.output_tokens == 60
    assert until_done(client, response_id).output_text == final.output_text


def test_stream_dropped_then_resumed_with_starting_after(client: openai.OpenAI, model_name: str) -> None:
    resume_after_a_drop(client, client, model_name)


def cancel_mid_generation(client: openai.OpenAI, canceller: openai.OpenAI, model_name: str) -> None:
    created = client.responses.create(model=model_name, input="Count slowly.", background=True, **LONG)
    so_far = until_some_output(client, created.id)
    cancelled = canceller.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert cancelled.output_text.startswith(so_far) and cancelled.usage is not None
    assert 0 < cancelled.usage.output_tokens < 200
    assert client.responses.retrieve(created.id).model_dump() == cancelled.model_dump()
    assert canceller.responses.cancel(created.id).status == "cancelled"  # idempotent, as OpenAI


def test_cancel_mid_generation_keeps_the_output_so_far(client: openai.OpenAI, model_name: str) -> None:
    cancel_mid_generation(client, client, model_name)


def test_starting_after_past_the_end_is_a_400(client: openai.OpenAI, model_name: str) -> None:
    created = client.responses.create(model=model_name, input="Hi.", background=True, temperature=0,
                                      max_output_tokens=2)
    until_done(client, created.id)
    with pytest.raises(openai.BadRequestError) as refused:
        list(client.responses.retrieve(created.id, stream=True, starting_after=10_000))
    assert refused.value.body["param"] == "starting_after"  # type: ignore[index]


def test_another_users_response_is_a_404(client: openai.OpenAI, model_name: str, server_url: str,
                                         server_database_url: str, redis_url: str) -> None:
    created = client.responses.create(model=model_name, input="Count slowly.", background=True, **LONG)
    key = user_with_key(server_settings(server_database_url, redis_url), f"other-{uuid.uuid4().hex[:8]}")
    stranger = openai.OpenAI(base_url=f"{server_url}/v1", api_key=key, max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.cancel(created.id)
    with pytest.raises(openai.NotFoundError):
        list(stranger.responses.retrieve(created.id, stream=True, starting_after=0))
    assert client.responses.cancel(created.id).status == "cancelled"


def test_resumed_on_another_replica(client: openai.OpenAI, on_other: openai.OpenAI, model_name: str) -> None:
    resume_after_a_drop(client, on_other, model_name)


def test_cancelled_from_another_replica(client: openai.OpenAI, on_other: openai.OpenAI, model_name: str) -> None:
    cancel_mid_generation(client, on_other, model_name)
