"""OpenAI's Responses API end to end (real server, real CPU engine, real model) through the official openai SDK and
LangChain: responses.create with a string and with items (a function call and its output, instructions), the events
of stream=True, the responses.stream() helper, a forced function call, json_schema output, max_output_tokens ending
incomplete, input_tokens; and the same prompt and greedy text as /v1/chat/completions for the same messages."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
from openai.types.responses import Response

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city", "strict": True,
           "parameters": WEATHER_SCHEMA}
QUESTION = "Write one sentence about the sea."
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 16}
ROUND_TRIP = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the weather in Rome?"}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather",
     "arguments": json.dumps({"city": "Rome", "unit": "C"})},
    {"type": "function_call_output", "call_id": "call_1", "output": "21 C, sunny"},
]


def test_create_with_a_string(client: openai.OpenAI, model_name: str) -> None:
    response = client.responses.create(model=model_name, input=QUESTION, instructions="You are brief.", **GREEDY)
    Response.model_validate(response.model_dump())
    assert response.id.startswith("resp_") and response.status in ("completed", "incomplete")
    assert response.output_text.strip() and response.instructions == "You are brief."
    assert response.usage is not None and response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 16


def test_items_with_a_function_call_and_its_output(client: openai.OpenAI, model_name: str) -> None:
    response = client.responses.create(model=model_name, input=ROUND_TRIP, tools=[WEATHER], tool_choice="none",
                                       instructions="Answer from the tool's result.", **GREEDY)
    assert response.output[0].type == "message" and response.output_text.strip()


def test_greedy_output_equals_chat_completions(client: openai.OpenAI, model_name: str) -> None:
    """The same messages render the same prompt: the same greedy text and the same prompt tokens."""
    response = client.responses.create(model=model_name, input=ROUND_TRIP, instructions="Be brief.", **GREEDY)
    chat = client.chat.completions.create(model=model_name, temperature=0, max_tokens=16, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Rome", "unit": "C"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"}])
    assert response.output_text == chat.choices[0].message.content
    assert response.usage is not None and chat.usage is not None
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_stream_events(client: openai.OpenAI, model_name: str) -> None:
    events = list(client.responses.create(model=model_name, input=QUESTION, stream=True, **GREEDY))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    types = [event.type for event in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          types[-1]] and types[-1] in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text and final.output_text == text


def test_the_stream_helper_assembles_the_final_response(client: openai.OpenAI, model_name: str) -> None:
    with client.responses.stream(model=model_name, input=QUESTION, temperature=0, max_output_tokens=200) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == text and text.strip()


def test_a_forced_function_call(client: openai.OpenAI, model_name: str) -> None:
    request: dict[str, Any] = {"model": model_name, "input": "What is the weather in Rome?", "tools": [WEATHER],
                               "tool_choice": {"type": "function", "name": "get_weather"},
                               "parallel_tool_calls": False, "temperature": 0, "max_output_tokens": 80}
    response = client.responses.create(**request)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id and calls[0].id.startswith("fc_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
    with client.responses.stream(**request) as stream:
        final = stream.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    assert json.loads(streamed[0].arguments) == json.loads(calls[0].arguments)


def test_json_schema_output(client: openai.OpenAI, model_name: str) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = client.responses.create(
        model=model_name, input="Give the name and age of a person as JSON.", temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_max_output_tokens_ends_incomplete(client: openai.OpenAI, model_name: str) -> None:
    response = client.responses.create(model=model_name, input=QUESTION, temperature=0, max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 2


def test_input_tokens(client: openai.OpenAI, model_name: str) -> None:
    counted = client.responses.input_tokens.count(model=model_name, input=ROUND_TRIP, instructions="Be brief.")
    response = client.responses.create(model=model_name, input=ROUND_TRIP, instructions="Be brief.",
                                       temperature=0, max_output_tokens=1)
    assert response.usage is not None and counted.input_tokens == response.usage.input_tokens > 0


def test_refusals_in_openais_envelope(http: httpx.Client, model_name: str) -> None:
    for body, param in [({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
                        ({"background": True, "store": False}, "background"),
                        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type")]:
        refused = http.post("/v1/responses", json={"model": model_name, "input": "Hi", **body})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param


def test_langchain_invoke_and_stream(server_url: str, admin_key: str, model_name: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=model_name, base_url=f"{server_url}/v1", api_key=admin_key, use_responses_api=True,
                     temperature=0, max_tokens=16, max_retries=0, timeout=120)
    answer = llm.invoke(QUESTION)
    assert answer.text.strip() and answer.response_metadata.get("id", "").startswith("resp_")
    chunks = list(llm.stream(QUESTION))
    assert "".join(chunk.text for chunk in chunks) == answer.text
