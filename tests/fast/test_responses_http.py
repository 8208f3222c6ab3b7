"""OpenAI's Responses API on the fast tier: the field table against vLLM's model, the conversion of input items
against vLLM's own, every refusal in OpenAI's envelope, the body against openai's Response model, the event sequence
(and the openai SDK's stream helper assembling it), and what the state is asked and told."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from server.apis.decode import decode_body
from server.apis.openai.fields import markdown_table
from server.apis.openai.responses.fields import OPENAI_ONLY, RESPONSES_FIELDS
from server.apis.openai.responses.protocol import ResponsesRequest
from server.exceptions import InvalidRequest

from fast.fake_engine import ENGINE_FAILS, FAKE_MODEL, FakeEngine
from support.openai_envelope import assert_envelope

RESPONSES = "/v1/responses"
HI = {"model": FAKE_MODEL, "input": "Hi"}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ROUND_TRIP = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Look it up."}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "And tomorrow?"},
]


def request(body: dict[str, Any]) -> ResponsesRequest:
    return decode_body(json.dumps(body).encode(), ResponsesRequest)


def events_of(text: str) -> list[dict[str, Any]]:
    """Each event's data; its name must equal the data's type (keep-alive comments skipped)."""
    events = []
    for block in text.strip().split("\n\n"):
        if block.startswith(":"):
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"], block
        events.append(data)
    return events


# --- the request ---------------------------------------------------------------------------------------------------

def test_every_field_of_vllms_responses_schema_is_classified() -> None:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as VllmResponsesRequest

    assert set(VllmResponsesRequest.model_fields) == set(RESPONSES_FIELDS) - set(OPENAI_ONLY)
    assert set(RESPONSES_FIELDS) <= set(ResponsesRequest.__struct_fields__), "a field not declared is refused"


def test_the_docs_carry_the_field_table() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "responses.md").read_text()
    assert markdown_table(RESPONSES_FIELDS) in page, "run python -m server.apis.openai.responses.fields and paste it"


def normalized(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's messages as its chat parser reads them: input_text and output_text parts are text parts, the item's
    type key is not part of a message."""
    out = []
    for message in messages:
        message = {key: value for key, value in dict(message).items() if key != "type"}
        if isinstance(message.get("content"), list):
            message["content"] = [{"type": "text", "text": part["text"]} for part in message["content"]]
        if "tool_calls" in message:
            message["tool_calls"] = [dict(call) for call in message["tool_calls"]]
        out.append(message)
    return out


@pytest.mark.parametrize("items", [
    ROUND_TRIP,
    [{"role": "user", "content": "Hi"}, {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
     {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
     {"type": "function_call_output", "call_id": "a", "output": "1"},
     {"type": "function_call_output", "call_id": "b", "output": "2"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                                       {"type": "input_text", "text": "b"}]},
     {"role": "assistant", "content": "x"}, {"type": "reasoning", "summary": [{"type": "summary_text", "text": "r"}]}],
], ids=["round-trip", "parallel-calls", "roles-and-parts"])
def test_input_items_become_the_messages_vllm_serve_makes(items: list[dict[str, Any]]) -> None:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as VllmResponsesRequest
    from vllm.entrypoints.openai.responses.utils import construct_input_messages

    theirs = VllmResponsesRequest.model_validate({"input": items, "instructions": "Be kind."})
    expected = normalized(construct_input_messages(request_instructions=theirs.instructions,
                                                   request_input=theirs.input))
    ours = request({**HI, "input": items, "instructions": "Be kind."}).chat_input([])
    assert ours.messages == expected


def test_fields_map_to_vllms_chat_fields() -> None:
    chat = request({**HI, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
                    "max_output_tokens": 7, "temperature": 0, "top_p": 0.5, "parallel_tool_calls": False,
                    "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
                    "reasoning": {"effort": "low"}, "include": ["message.output_text.logprobs"],
                    "top_logprobs": 2, "truncation": "auto"}).chat_input([], 100)
    assert chat.fields == {
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                    "parameters": WEATHER["parameters"]}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": True},
        "max_tokens": 7, "temperature": 0, "top_p": 0.5, "parallel_tool_calls": False,
        "structured_outputs": {"json": {"type": "object"}}, "logprobs": True, "top_logprobs": 2,
        "truncate_prompt_tokens": 93, "truncation_side": "left"}
    assert request(HI).chat_input([]).fields == {}
    assert request({**HI, "text": {"format": {"type": "json_object"}}}).chat_input([]).fields == {
        "structured_outputs": {"json_object": True}}


@pytest.mark.parametrize("body, param", [
    ({**HI, "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({**HI, "tools": [WEATHER, {"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[1].type"),
    ({**HI, "tools": [{**WEATHER, "name": ""}]}, "tools[0].name"),
    ({**HI, "background": True, "store": False}, "background"),
    ({**HI, "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({**HI, "input": [{"type": "hologram"}]}, "input[0].type"),
    ({**HI, "input": [{"type": ["message"]}]}, "input[0].type"),
    ({**HI, "input": [{"type": "reasoning", "summary": 7}]}, "input[0].summary"),
    ({**HI, "input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({**HI, "input": [{"role": "user", "content": [{"type": {"x": 1}}]}]}, "input[0].content[0].type"),
    ({**HI, "input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}, "input[0].content[0].text"),
    ({**HI, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({**HI, "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({**HI, "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
    ({**HI, "input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]}, "input[0].encrypted_content"),
    ({**HI, "tool_choice": "required"}, "tool_choice"),
    ({**HI, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
    ({**HI, "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({**HI, "previous_response_id": "resp_1", "conversation": "conv_1"}, "previous_response_id"),
    ({**HI, "include": ["everything"]}, "include[0]"),
    ({**HI, "truncation": "auto"}, "truncation"),
    ({**HI, "service_tier": "flex"}, "service_tier"),
    ({**HI, "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({**HI, "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request(body)
    assert refused.value.param == param, refused.value


# --- over HTTP -----------------------------------------------------------------------------------------------------

class RecordingState:
    """A state that hands back fixed context and records what it was told to keep."""

    def __init__(self, context: list[dict[str, Any]]) -> None:
        self.items = context
        self.asked: list[tuple[uuid.UUID, str | None, str | None]] = []
        self.saved: list[tuple[dict[str, Any], list[dict[str, Any]], bool, str | None]] = []

    async def context(self, owner_id: uuid.UUID, *, previous_response_id: str | None,
                      conversation_id: str | None) -> list[dict[str, Any]]:
        self.asked.append((owner_id, previous_response_id, conversation_id))
        return self.items

    async def save(self, owner_id: uuid.UUID, response: dict[str, Any], input_items: list[dict[str, Any]], *,
                   store: bool, conversation_id: str | None) -> None:
        self.saved.append((response, input_items, store, conversation_id))


@pytest.fixture
async def sdk(client: httpx.AsyncClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url="http://fast.test/v1", api_key="none", http_client=client) as made:
        yield made


async def test_bad_input_is_a_400_in_openais_envelope_and_nothing_is_generated(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    for body, param in [({**HI, "tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type"),
                        ({**HI, "background": True, "store": False}, "background"),
                        ({**HI, "input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
                        ({**HI, "frobnicate": 1}, "frobnicate")]:
        error = assert_envelope(await client.post(RESPONSES, json=body), 400, param)
        assert error["type"] == "invalid_request_error"
    # Ids the store does not hold for this caller (unknown, expired, deleted, another user's) are 404s naming them.
    for body, param in [({**HI, "previous_response_id": "resp_" + "0" * 32}, "previous_response_id"),
                        ({**HI, "conversation": {"id": "conv_" + "0" * 32}}, "conversation")]:
        assert_envelope(await client.post(RESPONSES, json=body), 404, param)
    assert "background requires store" in str(assert_envelope(
        await client.post(RESPONSES, json={**HI, "background": True, "store": False}), 400)["message"])
    assert_envelope(await client.post(RESPONSES, json={**HI, "model": "gpt-5"}), 404, "model")
    assert engine.prepared == []


async def test_a_response_is_openais_response_object(sdk: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    response = await sdk.responses.create(model=FAKE_MODEL, input="Hi", instructions="Be brief.",
                                          metadata={"k": "v"}, user="u-1", prompt_cache_key="session-1")
    Response.model_validate(response.model_dump())
    assert response.id.startswith("resp_") and response.status == "completed" and response.model == FAKE_MODEL
    assert response.output_text == "".join(f"w{i} " for i in range(12))
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}
    assert response.prompt_cache_key == "session-1" and response.store is True and response.background is False
    prompt, _ = engine.prepared[0]
    assert prompt.text is not None and prompt.text.startswith("<system>Be brief.\n<user>Hi\n")
    assert response.usage is not None and response.usage.input_tokens == prompt.num_tokens
    assert response.usage.output_tokens == 12 and response.usage.total_tokens == prompt.num_tokens + 12

    short = await sdk.responses.create(model=FAKE_MODEL, input="Hi", max_output_tokens=3)
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens" and short.output[0].status == "incomplete"


async def test_logprobs_with_include(client: httpx.AsyncClient) -> None:
    body = (await client.post(RESPONSES, json={**HI, "max_output_tokens": 2, "top_logprobs": 1,
                                               "include": ["message.output_text.logprobs"]})).json()
    Response.model_validate(body)
    logprobs = body["output"][0]["content"][0]["logprobs"]
    assert [entry["token"] for entry in logprobs] == ["w0 ", "w1 "] and len(logprobs[0]["top_logprobs"]) == 1


async def test_the_event_sequence(client: httpx.AsyncClient) -> None:
    response = await client.post(RESPONSES, json={**HI, "max_output_tokens": 3, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 3, "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.incomplete"]
    item_id = events[2]["item"]["id"]
    assert all(event["item_id"] == item_id for event in events[3:9])
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.output[0].id == item_id
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


async def test_the_sdks_stream_helper_assembles_the_final_response(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.responses.stream(model=FAKE_MODEL, input="Hi", max_output_tokens=50) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) == "".join(
        f"w{i} " for i in range(12))


async def test_an_engine_error_after_the_first_event_is_response_failed(client: httpx.AsyncClient) -> None:
    response = await client.post(RESPONSES, json={**HI, "input": f"Hi {ENGINE_FAILS}", "stream": True})
    events = events_of(response.text)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed" and events[-2]["type"] == "response.output_item.done"
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"


async def test_keep_alive_while_the_request_waits(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async with client_for(FakeEngine(token_delay_s=0.5), sse_heartbeat_s=0.1) as http:
        response = await http.post(RESPONSES, json={**HI, "max_output_tokens": 1, "stream": True})
    blocks = response.text.strip().split("\n\n")
    assert blocks[2].startswith(": keep-alive") and "response.output_item.added" in response.text


async def test_input_tokens_is_the_rendered_prompt(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = {"model": FAKE_MODEL, "input": ROUND_TRIP, "instructions": "Be kind.", "tools": [WEATHER],
            "tool_choice": "required"}
    counted = await client.post(f"{RESPONSES}/input_tokens", json=body)
    assert counted.status_code == 200, counted.text
    rendered = await engine.render(request(body).chat_input([]))
    assert counted.json() == {"object": "response.input_tokens", "input_tokens": rendered.num_tokens}
    assert_envelope(await client.post(f"{RESPONSES}/input_tokens", json={**body, "stream": True}), 400, "stream")


async def test_the_state_gives_the_context_and_keeps_what_ended(client: httpx.AsyncClient,
                                                                engine: FakeEngine) -> None:
    state = RecordingState([{"type": "message", "role": "user", "content": "Before"},
                            {"type": "message", "role": "assistant",
                             "content": [{"type": "output_text", "text": "Earlier"}]}])
    client._transport.app.state.services.responses.state = state  # type: ignore[attr-defined]
    body = (await client.post(RESPONSES, json={**HI, "previous_response_id": "resp_1", "store": False})).json()
    assert state.asked[0][1:] == ("resp_1", None)
    assert engine.prepared[0][0].text == "<user>Before\n<assistant>Earlier\n<user>Hi\n<assistant>"
    saved, items, store, conversation = state.saved[0]
    assert saved == body and items == [{"type": "message", "role": "user", "content": "Hi"}]
    assert store is False and conversation is None and body["previous_response_id"] == "resp_1"

    streamed = await client.post(RESPONSES, json={**HI, "conversation": "conv_1", "stream": True})
    final = events_of(streamed.text)[-1]["response"]
    assert state.asked[1][1:] == (None, "conv_1") and state.saved[1][0] == final
    assert final["conversation"] == {"id": "conv_1"} and state.saved[1][3] == "conv_1"
