"""/v1/chat/completions and /v1/models over the ASGI transport with FakeEngine: bodies, SSE framing, usage, the
error envelope for every kind of bad input."""

from __future__ import annotations

import httpx
import pytest

from loadtests.sse import iter_events

from fast.fake_engine import FAKE_MODEL, TEMPLATE_REFUSES, FakeEngine
from support.openai_envelope import CHAT, HELLO, assert_envelope


async def test_models(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == [FAKE_MODEL] and body["data"][0]["max_model_len"] == 2048


async def test_non_stream_body(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    response = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 5, "ignore_eos": True})
    body = response.json()
    assert response.status_code == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "w0 w1 w2 w3 w4 "}
    assert body["choices"][0]["finish_reason"] == "length"
    prompt, fields = engine.prepared[-1]
    assert body["usage"] == {"prompt_tokens": prompt.num_tokens, "completion_tokens": 5,
                             "total_tokens": prompt.num_tokens + 5, "prompt_tokens_details": {"cached_tokens": 0}}
    assert fields["max_tokens"] == 5 and fields["ignore_eos"]


async def test_stream_framing(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 3, "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = list(iter_events(response.text.splitlines()))
    assert events[-1].done
    chunks = [e.json() for e in events[:-1]]
    # The role chunk leaves with the first token, in the same write.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "w0 w1 w2 "
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1]) and len({c["id"] for c in chunks}) == 1


async def test_stop_n_and_logprobs_reach_the_engine(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = (await client.post(CHAT, json={"messages": HELLO, "max_tokens": 4, "n": 2, "logprobs": True,
                                          "top_logprobs": 1, "stop": ["w2"], "seed": 3})).json()
    _, fields = engine.prepared[-1]
    assert (fields["n"], fields["top_logprobs"], fields["stop"], fields["seed"]) == (2, 1, ["w2"], 3)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] == -0.5


@pytest.mark.parametrize("payload, param", [
    ({}, None),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "temperature": 3}, "temperature"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HELLO, "stop": [""]}, "stop"),
    ({"messages": HELLO, "seed": 2**70}, "seed"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": HELLO, "max_tokens": 100_000}, "messages"),
    ({"messages": [{"role": "user", "content": TEMPLATE_REFUSES}]}, "messages"),
])
async def test_bad_requests_are_400_naming_the_field(client: httpx.AsyncClient, engine: FakeEngine,
                                                     payload: dict[str, object], param: str | None) -> None:
    assert_envelope(await client.post(CHAT, json=payload), 400, param)
    assert engine.prepared == []  # nothing reached the engine


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
async def test_malformed_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    assert_envelope(await client.post(CHAT, content=body), 400)


async def test_unknown_model_route_and_method(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.post(CHAT, json={"messages": HELLO, "model": "gpt-9"}), 404, "model")
    assert_envelope(await client.get("/v1/nothing-here"), 404)
    assert_envelope(await client.get(CHAT), 405)


async def test_body_over_the_limit(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.post(CHAT, json={"messages": [{"role": "user", "content": "x" * 70_000}]}), 413)


async def test_admission_control(client_for, engine: FakeEngine) -> None:
    engine.in_flight = 5
    async with client_for(engine, max_inflight_generations=5) as http:
        response = await http.post(CHAT, json={"messages": HELLO})
    assert_envelope(response, 503)
    assert response.headers["retry-after"] == "1"


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["model"] == FAKE_MODEL
