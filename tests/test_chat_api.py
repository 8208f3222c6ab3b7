"""The chat API as a drop-in for vllm serve's, through the official openai SDK against the real engine: structured
output, tools (required, named, auto with the hermes parser, a tool loop), every sampling field honoured (each test
fails if its field were dropped), nulls, refusals, usage, ids, and an engine failure mid-stream."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import openai
import pytest

from loadtests.sse import iter_events
from server.apis.openai.fields import CHAT_FIELDS, Support

from conftest import RunningServer
from engine_faults import engine_fails

# The openai SDK tests every deployment must pass (tests/test_scale_out.py runs them against two API processes).
from support.sdk_contract import (  # noqa: F401
    ask,
    test_auto_with_the_hermes_parser_and_a_tool_loop,
    test_forced_tool_call_validates_and_streams_the_same,
    test_parse_with_a_pydantic_model,
)

CHAT = "/v1/chat/completions"


# --- structured output ---------------------------------------------------------------------------------------------

def test_json_object_is_parseable(client: openai.OpenAI, model_name: str) -> None:
    completion = client.chat.completions.create(
        model=model_name, messages=ask("Give a JSON object with the keys name and age of a person."),
        response_format={"type": "json_object"}, max_tokens=120, temperature=0)
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_regex_and_choice_hold_on_20_replies(client: openai.OpenAI, model_name: str) -> None:
    pattern = r"[0-9]{3}-[a-z]{2}"
    replies = []
    for n in (16, 4):
        completion = client.chat.completions.create(
            model=model_name, messages=ask("Write a code."), n=n, temperature=1.0, max_tokens=12, seed=n,
            extra_body={"structured_outputs": {"regex": pattern}})
        replies += [choice.message.content for choice in completion.choices]
    assert len(replies) == 20 and all(re.fullmatch(pattern, reply) for reply in replies), replies
    chosen = client.chat.completions.create(
        model=model_name, messages=ask("Pick a colour."), n=16, temperature=1.0, max_tokens=5, seed=1,
        extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}})
    picks = [choice.message.content for choice in chosen.choices]
    chosen_again = client.chat.completions.create(
        model=model_name, messages=ask("Pick a colour."), n=4, temperature=1.0, max_tokens=5, seed=2,
        extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}})
    picks += [choice.message.content for choice in chosen_again.choices]
    assert len(picks) == 20 and set(picks) <= {"red", "green", "blue"}, picks


# --- tools -----------------------------------------------------------------------------------------------------------

# --- every sampling field reaches the engine ----------------------------------------------------------------------

def first_token_id(client: openai.OpenAI, model_name: str, **extra: object) -> int:
    completion = client.chat.completions.create(model=model_name, messages=ask("Name a fruit."), max_tokens=1,
                                                temperature=0, extra_body={"return_token_ids": True, **extra})
    return completion.choices[0].model_extra["token_ids"][0]


def test_logit_bias_changes_the_first_token(client: openai.OpenAI, model_name: str) -> None:
    favourite = first_token_id(client, model_name)
    assert first_token_id(client, model_name, logit_bias={str(favourite): -100}) != favourite


def greedy(client: openai.OpenAI, model_name: str, text: str = "Count from 1 to 10.", **extra: object) -> str:
    return client.chat.completions.create(model=model_name, messages=ask(text), max_tokens=24, temperature=0,
                                          **extra).choices[0].message.content


def test_min_p_one_leaves_only_the_top_token(client: openai.OpenAI, model_name: str) -> None:
    def sampled(**extra: object) -> set[str]:
        return {client.chat.completions.create(model=model_name, messages=ask("Write a word."), max_tokens=16,
                                               temperature=1.5, seed=seed, extra_body=extra
                                               ).choices[0].message.content for seed in range(3)}

    assert len(sampled()) > 1  # hot sampling differs from seed to seed
    assert len(sampled(min_p=1.0)) == 1  # with min_p 1 only the most likely token survives, whatever the seed


def test_stop_token_ids(client: openai.OpenAI, model_name: str) -> None:
    whole = client.chat.completions.create(model=model_name, messages=ask("Count from 1 to 10."), max_tokens=24,
                                           temperature=0, extra_body={"return_token_ids": True})
    ids = whole.choices[0].model_extra["token_ids"]
    stopped = client.chat.completions.create(model=model_name, messages=ask("Count from 1 to 10."), max_tokens=24,
                                             temperature=0, extra_body={"stop_token_ids": [ids[3]],
                                                                        "return_token_ids": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert len(stopped.choices[0].model_extra["token_ids"]) <= 4 < len(ids)


def test_bad_words(client: openai.OpenAI, model_name: str) -> None:
    text = greedy(client, model_name, "Name three fruits.")
    word = re.findall(r"[A-Za-z]{4,}", text)[0]
    assert word not in greedy(client, model_name, "Name three fruits.", extra_body={"bad_words": [word]})


def test_continue_final_message_and_echo(client: openai.OpenAI, model_name: str) -> None:
    prefill = [*ask("Count from 1 to 10, separated by commas."), {"role": "assistant", "content": "1, 2, 3,"}]
    body = {"add_generation_prompt": False, "continue_final_message": True}
    continued = client.chat.completions.create(model=model_name, messages=prefill, max_tokens=8, temperature=0,
                                               extra_body=body).choices[0].message.content
    assert continued.lstrip().startswith("4"), continued
    echoed = client.chat.completions.create(model=model_name, messages=prefill, max_tokens=8, temperature=0,
                                            extra_body={**body, "echo": True}).choices[0].message.content
    assert echoed == "1, 2, 3," + continued


def test_nulls_mean_not_set(http: httpx.Client) -> None:
    optional = {name: None for name, field in CHAT_FIELDS.items() if name not in ("messages",)}
    response = http.post(CHAT, json={"messages": ask("Hi"), **optional, "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4


@pytest.mark.parametrize("name", sorted(n for n, f in CHAT_FIELDS.items() if f.support == Support.REFUSED))
def test_every_refused_field_is_a_400_naming_it(http: httpx.Client, name: str) -> None:
    value = {"use_beam_search": True, "length_penalty": 0.5, "mm_payload": "none",
             "routed_experts_prompt_start": 3, "return_token_offsets": True, "return_prompt_text": True,
             "watermarking": True}.get(name, {"x": 1})
    response = http.post(CHAT, json={"messages": ask("Hi"), name: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name


# --- usage, ids, fingerprints, streams -----------------------------------------------------------------------------

def test_cached_tokens_and_fingerprint(client: openai.OpenAI, model_name: str) -> None:
    long = ask("Remember this list: " + ", ".join(f"item {i}" for i in range(120)) + ". Which is first?")
    first = client.chat.completions.create(model=model_name, messages=long, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=model_name, messages=long, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens > 256
    assert again.usage.prompt_tokens_details.cached_tokens >= 128  # the CPU backend caches 128-token blocks
    assert first.system_fingerprint and first.system_fingerprint == again.system_fingerprint


def test_request_id_becomes_the_completion_id(http: httpx.Client) -> None:
    chosen = f"my-{uuid.uuid4().hex[:8]}"
    body = http.post(CHAT, json={"messages": ask("Hi"), "max_tokens": 2, "request_id": chosen}).json()
    assert body["id"] == f"chatcmpl-{chosen}"
    header = http.post(CHAT, json={"messages": ask("Hi"), "max_tokens": 2}, headers={"X-Request-ID": "hdr-7"}).json()
    assert header["id"] == "chatcmpl-hdr-7"


def test_continuous_usage_stats(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"messages": ask("Hi"), "max_tokens": 5, "ignore_eos": True, "stream": True,
                                     "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    chunks = [e.json() for e in iter_events(response.text.splitlines()) if not e.done]
    assert all(c["usage"] is not None for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_stream_interval_sends_the_first_token_at_once_then_tokens_in_groups(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"messages": ask("Tell me a story."), "max_tokens": 9, "ignore_eos": True,
                                     "stream": True, "stream_interval": 4,
                                     "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    chunks = [e.json() for e in iter_events(response.text.splitlines()) if not e.done]
    texts = [(c["usage"]["completion_tokens"], c["choices"][0]["delta"].get("content")) for c in chunks if c["choices"]]
    assert [tokens for tokens, text in texts if text] == [1, 5, 9]  # the first at once, then 4 at a time


def test_engine_failure_mid_stream_ends_with_an_error_chunk_and_done(http: httpx.Client,
                                                                     running_server: RunningServer) -> None:
    with engine_fails(running_server.app, after_outputs=3):
        response = http.post(CHAT, json={"messages": ask("Tell me a story."), "max_tokens": 50, "ignore_eos": True,
                                         "stream": True})
        whole = http.post(CHAT, json={"messages": ask("Tell me a story."), "max_tokens": 50, "ignore_eos": True})
    assert response.status_code == 200
    events = list(iter_events(response.text.splitlines()))
    assert events[-1].done and "error" in events[-2].json()
    assert sum(1 for e in events[:-2] if e.json()["choices"]) >= 3  # the tokens before the failure arrived
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
