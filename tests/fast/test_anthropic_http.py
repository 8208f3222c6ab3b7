"""Anthropic's Messages API on the fast tier: the translation to the engine's request, the field table against vLLM's
model, the answers and the event sequence, and every error in Anthropic's shape (middleware's included)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from server.apis.anthropic.fields import ANTHROPIC_ONLY, MESSAGES_FIELDS
from server.apis.anthropic.protocol import MessagesRequest
from server.apis.anthropic.schemas import AnthropicErrorEnvelope, MessageResponse, TokenCount
from server.apis.anthropic.serving import StopReason, stop_reason
from server.apis.decode import decode_body
from server.apis.openai.fields import markdown_table
from server.errors import dialect_of, response_for
from server.exceptions import InvalidRequest, Overloaded

from fast.conftest import UNLIMITED
from fast.fake_engine import FAKE_MODEL, FakeEngine

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
HI = {"model": FAKE_MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOL_ROUND = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": [{"type": "text", "text": "18 C, sunny"}]},
                                 {"type": "text", "text": "Thanks"}]},
]


def anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The message of an error in Anthropic's shape, and nothing else in the body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type, body
    msgspec.convert(body, AnthropicErrorEnvelope)
    message: str = body["error"]["message"]
    return message


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event; the name must equal the data's type, as Anthropic sends them."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"], block
        events.append((lines["event"], data))
    return events


# --- translation ---------------------------------------------------------------------------------------------------

def translate(body: dict[str, Any]) -> Any:
    return decode_body(json.dumps(body).encode(), MessagesRequest).chat_input()


def test_a_tool_round_trip_becomes_openai_messages_as_vllm_converts_it() -> None:
    chat = translate({**HI, "system": [{"type": "text", "text": "x-anthropic-billing-header: 1"},
                                       {"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Be kind."}],
                      "messages": TOOL_ROUND, "tools": [WEATHER], "stop_sequences": ["END"], "temperature": 0,
                      "top_k": 5, "top_p": 0.5})
    assert chat.messages == [
        {"role": "system", "content": "Be brief. Be kind."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [{"id": "toolu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C, sunny"},
        {"role": "user", "content": "Thanks"},
    ]
    assert chat.fields == {"max_tokens": 32, "stop": ["END"], "temperature": 0, "top_k": 5, "top_p": 0.5,
                           "tool_choice": "auto",
                           "tools": [{"type": "function", "function": {
                               "name": "get_weather", "description": "The weather in a city",
                               "parameters": WEATHER["input_schema"]}}]}


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_maps_to_vllms(choice: dict[str, Any], expected: Any) -> None:
    fields = translate({**HI, "tools": [WEATHER], "tool_choice": {**choice, "disable_parallel_tool_use": True}}).fields
    assert fields["tool_choice"] == expected and fields["parallel_tool_calls"] is False


def test_thinking_and_output_config_map_to_vllms_fields() -> None:
    fields = translate({**HI, "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048},
                        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}).fields
    assert fields["thinking_token_budget"] == 2048
    assert fields["response_format"] == {"type": "json_schema",
                                         "json_schema": {"name": "json_schema", "schema": {"type": "object"}}}
    assert translate({**HI, "thinking": {"type": "disabled"}}).fields["reasoning_effort"] == "none"


@pytest.mark.parametrize("finish, matched, tool, expected", [
    ("length", "END", True, (StopReason.MAX_TOKENS, None)),
    ("stop", "END", False, (StopReason.STOP_SEQUENCE, "END")),
    ("stop", None, False, (StopReason.END_TURN, None)),
    ("stop", 2, False, (StopReason.END_TURN, None)),
    ("tool_calls", None, True, (StopReason.TOOL_USE, None)),
    ("stop", None, True, (StopReason.TOOL_USE, None)),
])
def test_stop_reasons(finish: str, matched: Any, tool: bool, expected: tuple[StopReason, str | None]) -> None:
    assert stop_reason(finish, matched, tool) == expected


@pytest.mark.parametrize("body, param", [
    ({k: v for k, v in HI.items() if k != "max_tokens"}, "max_tokens"),
    ({k: v for k, v in HI.items() if k != "model"}, "model"),
    ({**HI, "max_tokens": 0}, "max_tokens"),
    ({**HI, "messages": []}, "messages"),
    ({**HI, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
     "messages[0].content[0]"),
    ({**HI, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
     "messages[0].content[0]"),
    ({**HI, "messages": [{"role": "user", "content": [{"type": "video", "text": "x"}]}]},
     "messages[0].content[0].type"),
    ({**HI, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9",
                                                       "content": "x"}]}]}, "messages[0].content[0].tool_use_id"),
    ({**HI, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0]"),
    ({**HI, "tool_choice": {"type": "any"}}, "tool_choice"),
    ({**HI, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name"),
    ({**HI, "tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({**HI, "stop_sequences": [""]}, "stop_sequences"),
    ({**HI, "thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking.budget_tokens"),
    ({**HI, "watermarking": True}, "watermarking"),
    ({**HI, "kv_transfer_params": {"x": 1}}, "kv_transfer_params"),
    ({**HI, "mm_payload": "none"}, "mm_payload"),
    ({**HI, "service_tier": "auto"}, "service_tier"),
    ({**HI, "metadata": {"user_id": "u", "other": 1}}, "metadata.other"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        translate(body)
    assert refused.value.param == param, refused.value


def test_harmless_values_of_refused_fields_are_accepted() -> None:
    translate({**HI, "watermarking": False, "mm_payload": "tensors"})


def test_every_field_of_vllms_anthropic_schema_is_classified() -> None:
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest

    assert set(AnthropicMessagesRequest.model_fields) == set(MESSAGES_FIELDS) - set(ANTHROPIC_ONLY)
    assert set(MESSAGES_FIELDS) <= set(MessagesRequest.__struct_fields__), "a field not declared is refused"


def test_the_docs_carry_the_field_table() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "anthropic.md").read_text()
    assert markdown_table(MESSAGES_FIELDS) in page, "run python -m server.apis.anthropic.fields and paste the table"


# --- errors in Anthropic's shape -----------------------------------------------------------------------------------

def test_the_dialect_follows_the_path() -> None:
    assert [dialect_of(p) for p in (MESSAGES, COUNT, "/v1/messagesx", "/api/v1/chat", "/v1/chat/completions")] == [
        "anthropic", "anthropic", "openai", "seed", "openai"]


def test_overload_is_529_for_anthropic_clients_and_503_for_openai_ones() -> None:
    overloaded = Overloaded("the server is at capacity", retry_after_s=1)
    anthropic = response_for(overloaded, MESSAGES)
    assert anthropic.status_code == 529 and anthropic.headers["retry-after"] == "1"
    assert json.loads(bytes(anthropic.body))["error"]["type"] == "overloaded_error"
    assert response_for(overloaded, "/v1/chat/completions").status_code == 503


async def test_bad_input_is_a_4xx_in_anthropics_shape_and_nothing_is_generated(
        client_for: Callable[..., httpx.AsyncClient]) -> None:
    engine = FakeEngine()
    async with client_for(engine, max_body_bytes=1024 * 1024) as http:
        no_max = {k: v for k, v in HI.items() if k != "max_tokens"}
        assert "max_tokens" in anthropic_error(await http.post(MESSAGES, json=no_max), 400, "invalid_request_error")
        image = {**HI, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}
        assert "image" in anthropic_error(await http.post(MESSAGES, json=image), 400, "invalid_request_error")
        video = {**HI, "messages": [{"role": "user", "content": [{"type": "video"}]}]}
        assert "video" in anthropic_error(await http.post(MESSAGES, json=video), 400, "invalid_request_error")
        orphan = {**HI, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]}
        assert "tool_use" in anthropic_error(await http.post(MESSAGES, json=orphan), 400, "invalid_request_error")
        big = {**HI, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
        anthropic_error(await http.post(MESSAGES, json=big), 413, "request_too_large")
        anthropic_error(await http.post(MESSAGES, content=b"{}", headers={"content-type": "text/plain"}), 415,
                        "invalid_request_error")
        assert "model" in anthropic_error(await http.post(MESSAGES, json={**HI, "model": "claude-x"}), 404,
                                          "not_found_error")
        thinking = {**HI, "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1024}}
        assert "reasoning_parser" in anthropic_error(await http.post(MESSAGES, json=thinking), 400,
                                                     "invalid_request_error")
        anthropic_error(await http.get(MESSAGES), 405, "invalid_request_error")
        assert engine.prepared == []


async def test_credentials_as_anthropic_clients_send_them(auth_client: Any) -> None:
    client, headers = await auth_client(FakeEngine(), {"ann": UNLIMITED})
    key = headers["ann"]["Authorization"].removeprefix("Bearer ")
    async with client as http:
        anthropic_error(await http.post(MESSAGES, json=HI), 401, "authentication_error")
        anthropic_error(await http.post(MESSAGES, json=HI, headers={"x-api-key": "cf_not-a-key"}), 401,
                        "authentication_error")
        ok = await http.post(MESSAGES, json=HI, headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert ok.status_code == 200, ok.text
        assert (await http.post(MESSAGES, json=HI, headers=headers["ann"])).status_code == 200
        # The OpenAI routes take the same key either way.
        chat = {"messages": HI["messages"], "max_tokens": 2}
        assert (await http.post("/v1/chat/completions", json=chat, headers={"x-api-key": key})).status_code == 200


# --- answers -------------------------------------------------------------------------------------------------------

async def test_a_message(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    response = await client.post(MESSAGES, json={**HI, "metadata": {"user_id": "u-1"}})
    assert response.status_code == 200, response.text
    message = msgspec.convert(response.json(), MessageResponse)
    assert message.id.startswith("msg_") and message.model == FAKE_MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "".join(f"w{i} " for i in range(12))
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    prompt, fields = engine.prepared[0]
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == prompt.num_tokens
    assert message.usage.output_tokens == 12 and fields["max_tokens"] == 32
    short = (await client.post(MESSAGES, json={**HI, "max_tokens": 3})).json()
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 3


async def test_the_event_sequence(client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json={**HI, "max_tokens": 4, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert [name for name, _ in events] == ["message_start", "content_block_start", *["content_block_delta"] * 4,
                                            "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["stop_reason"] is None
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == "w0 w1 w2 w3 "
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4


async def test_ping_while_the_request_waits(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async with client_for(FakeEngine(token_delay_s=0.5), sse_heartbeat_s=0.1) as http:
        response = await http.post(MESSAGES, json={**HI, "max_tokens": 1, "stream": True})
    names = [name for name, _ in events_of(response.text)]
    assert names[0] == "message_start" and names[1] == "ping"
    assert "ping" not in names[names.index("content_block_start"):]


async def test_count_tokens_is_the_rendered_prompt(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = {"model": FAKE_MODEL, "system": "Be brief.", "messages": TOOL_ROUND, "tools": [WEATHER]}
    counted = await client.post(COUNT, json=body)
    assert counted.status_code == 200, counted.text
    rendered = await engine.render(decode_body(json.dumps({**body, "max_tokens": 1}).encode(),
                                               MessagesRequest).chat_input())
    assert msgspec.convert(counted.json(), TokenCount).input_tokens == rendered.num_tokens > 0
    anthropic_error(await client.post(COUNT, json={**body, "max_tokens": 1}), 400, "invalid_request_error")


def test_blocks_of_a_stream_thinking_text_tool_use_and_text_held_after_the_call() -> None:
    from engine import ChoiceDelta, ToolCallDelta
    from server.apis.anthropic.serving import BlockFramer

    blocks = BlockFramer()
    framed = b"".join([
        blocks.add(ChoiceDelta(0, "", 1, reasoning="Hmm.")),
        blocks.add(ChoiceDelta(0, "", 1, content="Let me check.")),
        blocks.add(ChoiceDelta(0, "", 1, tool_calls=[ToolCallDelta(0, "call_1", "get_weather", '{"city": ')])),
        blocks.add(ChoiceDelta(0, "", 1, tool_calls=[ToolCallDelta(0, arguments='"Rome"}')], content="Done.")),
        blocks.flush(),
    ])
    events = [data for _, data in events_of(framed.decode())]
    assert [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type"))
            for e in events] == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("content_block_start", 3, "text"), ("content_block_delta", 3, "text_delta"), ("content_block_stop", 3, None),
    ]
    assert "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta") == (
        '{"city": "Rome"}')
    assert events[7]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert events[-2]["delta"]["text"] == "Done."


async def test_thinking_is_mapped_when_a_reasoning_parser_is_configured(
        client_for: Callable[..., httpx.AsyncClient]) -> None:
    engine = FakeEngine()
    engine.reasoning_parser = "deepseek_r1"
    async with client_for(engine) as http:
        body = {**HI, "max_tokens": 1500, "thinking": {"type": "enabled", "budget_tokens": 1024}}
        response = await http.post(MESSAGES, json=body)
        assert response.status_code == 200, response.text
    assert engine.prepared[0][1]["thinking_token_budget"] == 1024


async def test_a_spent_request_budget_is_429_in_anthropics_shape_with_retry_after(auth_client: Any) -> None:
    client, headers = await auth_client(FakeEngine(), {"ann": {**UNLIMITED, "requests_per_minute": 1}})
    async with client as http:
        assert (await http.post(MESSAGES, json=HI, headers=headers["ann"])).status_code == 200
        refused = await http.post(MESSAGES, json=HI, headers=headers["ann"])
        anthropic_error(refused, 429, "rate_limit_error")
        assert int(refused.headers["retry-after"]) > 0
