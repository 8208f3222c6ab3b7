"""Anthropic's Messages API end to end through the official anthropic SDK (real server, real CPU engine, real
model): messages.create streamed and not, the messages.stream() helper, a tool round trip, count_tokens, x-api-key;
bad input in Anthropic's error shape; and the events and text compared with vllm serve's /v1/messages on the same
request, vllm serve started with the same engine arguments (the test server's profile) for this module."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# As tests/test_chat_api.py declares it: strict, both fields required, so that a forced call is short and closed.
WEATHER = {"name": "get_weather", "description": "Current weather for a city", "strict": True,
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                            "required": ["city", "unit"], "additionalProperties": False}}
# One call (vLLM's schema for a forced call then takes one item): the 135M model would go on calling.
ONE_CALL = {"type": "any", "disable_parallel_tool_use": True}
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]
# The SDK no longer has a temperature argument (Claude's newer models take none); the API still reads the field.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def client(server_url: str, admin_key: str) -> anthropic.Anthropic:
    """The SDK sends the key as x-api-key, with anthropic-version."""
    return anthropic.Anthropic(base_url=server_url, api_key=admin_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vllm serve with the test server's engine arguments and chat template; stopped when the module ends (it is
    one more engine in memory)."""
    from loadtests.systems import vllm_server
    from server.cli import resolve_model
    from server.settings import load_settings

    settings = load_settings(ROOT / "configs/cpu.yaml", kv_cache_space_gib=1)
    server = vllm_server(settings.engine_config(resolve_model(settings)), tmp_path_factory.mktemp("vllm"))
    server.command += ["--chat-template", str(ROOT / "configs/templates/smollm2_hermes_tools.jinja")]
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


def error_of(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    message: str = body["error"]["message"]
    return message


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "data" in lines:
            events.append((lines.get("event", ""), json.loads(lines["data"])))
    return events


def streamed_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(data["delta"].get("text", "") for name, data in events if name == "content_block_delta")


# --- the SDK ---------------------------------------------------------------------------------------------------------

def test_create(client: anthropic.Anthropic, model_name: str) -> None:
    message = client.messages.create(model=model_name, max_tokens=24, messages=QUESTION,
                                     system="You are brief.", metadata={"user_id": "end-user-1"}, **GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.model == model_name
    assert message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


def test_create_streamed_is_the_same_text(client: anthropic.Anthropic, model_name: str) -> None:
    request = {"model": model_name, "max_tokens": 24, "messages": QUESTION, **GREEDY}
    whole = client.messages.create(**request)
    kinds, text = [], ""
    for event in client.messages.create(**request, stream=True):
        kinds.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert text == whole.content[0].text


def test_the_stream_helper(client: anthropic.Anthropic, model_name: str) -> None:
    with client.messages.stream(model=model_name, max_tokens=24, messages=QUESTION, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0


def test_stop_sequence(client: anthropic.Anthropic, model_name: str) -> None:
    text = client.messages.create(model=model_name, max_tokens=24, messages=QUESTION, **GREEDY).content[0].text
    word = text.split()[2]
    stopped = client.messages.create(model=model_name, max_tokens=24, messages=QUESTION, stop_sequences=[word],
                                     **GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text and text.startswith(stopped.content[0].text)


def test_a_tool_round_trip(client: anthropic.Anthropic, model_name: str) -> None:
    """tool_use out (the hermes parser of the test profile), tool_result back, text at the end."""
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Rome?"}]
    first = client.messages.create(model=model_name, max_tokens=80, messages=messages, tools=[WEATHER],
                                   tool_choice=ONE_CALL, **GREEDY)
    calls = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and calls, first
    assert calls[0].name == "get_weather" and isinstance(calls[0].input, dict) and calls[0].input.get("city")
    with client.messages.stream(model=model_name, max_tokens=80, messages=messages, tools=[WEATHER],
                                tool_choice=ONE_CALL, **GREEDY) as stream:
        streamed = [block for block in stream.get_final_message().content if block.type == "tool_use"]
    assert streamed[0].name == calls[0].name and streamed[0].input == calls[0].input
    messages += [{"role": "assistant", "content": first.content},  # the SDK's blocks, sent back as they came
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                               "content": "25 C, clear sky"}]}]
    final = client.messages.create(model=model_name, max_tokens=30, messages=messages, tools=[WEATHER],
                                   tool_choice={"type": "none"}, **GREEDY)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in final.content] == ["text"] and final.content[0].text.strip()


def test_count_tokens_equals_tokenize(client: anthropic.Anthropic, model_name: str, server_url: str,
                                      auth_headers: dict[str, str]) -> None:
    counted = client.messages.count_tokens(model=model_name, system="You are brief.", messages=QUESTION)
    tokenized = httpx.post(f"{server_url}/tokenize", headers=auth_headers, timeout=60, json={
        "model": model_name, "messages": [{"role": "system", "content": "You are brief."}, *QUESTION]})
    assert tokenized.status_code == 200, tokenized.text
    assert counted.input_tokens == tokenized.json()["count"] > 0
    used = client.messages.create(model=model_name, max_tokens=1, system="You are brief.", messages=QUESTION)
    assert used.usage.input_tokens + (used.usage.cache_read_input_tokens or 0) == counted.input_tokens


def test_credentials(server_url: str, admin_key: str, model_name: str) -> None:
    body = {"model": model_name, "max_tokens": 2, "messages": QUESTION}
    ok = httpx.post(f"{server_url}/v1/messages", json=body, timeout=60,
                    headers={"x-api-key": admin_key, "anthropic-version": "2023-06-01"})
    assert ok.status_code == 200, ok.text
    error_of(httpx.post(f"{server_url}/v1/messages", json=body, timeout=60), 401, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server_url, api_key="cf_not-a-key", max_retries=0).messages.create(**body)


@pytest.mark.parametrize("change, status, error_type", [
    (lambda body: body.pop("max_tokens"), 400, "invalid_request_error"),
    (lambda body: body.update(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]),
     400, "invalid_request_error"),
    (lambda body: body.update(messages=[{"role": "user", "content": [{"type": "hologram", "text": "x"}]}]),
     400, "invalid_request_error"),
    (lambda body: body.update(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_missing", "content": "x"}]}]), 400, "invalid_request_error"),
    (lambda body: body.update(system="x" * (2 * 1024 * 1024)), 413, "request_too_large"),
], ids=["no-max-tokens", "image", "unknown-block", "orphan-tool-result", "2MiB"])
def test_bad_input_is_refused_in_anthropics_shape(server_url: str, admin_key: str, model_name: str, change: Any,
                                                  status: int, error_type: str) -> None:
    body: dict[str, Any] = {"model": model_name, "max_tokens": 8, "messages": QUESTION}
    change(body)
    before = generated_tokens(server_url)
    error_of(httpx.post(f"{server_url}/v1/messages", json=body, headers={"x-api-key": admin_key}, timeout=60),
             status, error_type)
    assert generated_tokens(server_url) == before, "nothing was generated"


def generated_tokens(server_url: str) -> float:
    """vLLM's count of prompt tokens the engine has taken (any generation moves it), once the last generation's
    iteration stats are recorded (vLLM records them right after its last output)."""
    time.sleep(0.5)
    metrics = httpx.get(f"{server_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("vllm:prompt_tokens_total"))


# --- the same as vllm serve ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_same_events_and_text_as_vllm_serve(vllm_serve: str, server_url: str, admin_key: str, model_name: str,
                                                stream: bool) -> None:
    served = httpx.get(f"{vllm_serve}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"max_tokens": 32, "temperature": 0, "system": "You are brief.", "messages": QUESTION, "stream": stream}
    ours = httpx.post(f"{server_url}/v1/messages", json={**body, "model": model_name},
                      headers={"x-api-key": admin_key}, timeout=120)
    theirs = httpx.post(f"{vllm_serve}/v1/messages", json={**body, "model": served}, timeout=120)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    if not stream:
        mine, reference = ours.json(), theirs.json()
        assert [b["type"] for b in mine["content"]] == [b["type"] for b in reference["content"]]
        assert mine["content"][0]["text"] == reference["content"][0]["text"]
        assert mine["stop_reason"] == reference["stop_reason"]
        assert mine["usage"]["output_tokens"] == reference["usage"]["output_tokens"]
        return
    mine_events = [(name, data) for name, data in sse_events(ours.text) if name != "ping"]
    reference_events = sse_events(theirs.text)
    assert [name for name, _ in mine_events] == [name for name, _ in reference_events]
    assert [data["type"] for _, data in mine_events] == [data["type"] for _, data in reference_events]
    assert streamed_text(mine_events) == streamed_text(reference_events) != ""
    assert mine_events[-2][1]["delta"] == reference_events[-2][1]["delta"]
    assert mine_events[1][1]["content_block"] == reference_events[1][1]["content_block"]
