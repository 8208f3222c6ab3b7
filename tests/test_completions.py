"""The rest of the API surface against the real engine: /v1/completions through the official openai SDK (every
prompt form, stream and not, echo, logprobs, n, the refused suffix), /tokenize and /detokenize in vLLM's shapes,
/health, /version and vLLM's model card."""

from __future__ import annotations

import httpx
import openai

from loadtests.sse import iter_events
from server.apis.openai.fields import COMPLETION_FIELDS


def test_completion_stream_and_not(client: openai.OpenAI, model_name: str) -> None:
    whole = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=6,
                                      temperature=0)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text and whole.usage.completion_tokens <= 6 and whole.system_fingerprint
    chunks = list(client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=6,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_every_prompt_form(client: openai.OpenAI, model_name: str, http: httpx.Client) -> None:
    ids = http.post("/tokenize", json={"prompt": "Once upon a time"}).json()["tokens"]
    by_text = client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=4, temperature=0)
    by_ids = client.completions.create(model=model_name, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    several = client.completions.create(model=model_name, prompt=["Once upon a time", "The sky is"], max_tokens=4,
                                        seed=1, n=2)
    assert sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    lists = client.completions.create(model=model_name, prompt=[ids, ids], max_tokens=4, temperature=0)
    assert [c.text for c in lists.choices] == [by_text.choices[0].text] * 2


def test_echo_and_logprobs(client: openai.OpenAI, model_name: str) -> None:
    echoed = client.completions.create(model=model_name, prompt="Roses are red,", max_tokens=4, temperature=0,
                                       echo=True, logprobs=2)
    choice = echoed.choices[0]
    assert choice.text.startswith("Roses are red,")
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == len(choice.logprobs.text_offset)
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs if top)


def test_suffix_and_refused_fields_are_400(http: httpx.Client) -> None:
    for field, value in (("suffix", "end"), ("prompt_embeds", "abc"), ("use_beam_search", True)):
        response = http.post("/v1/completions", json={"prompt": "Hi", field: value})
        assert response.status_code == 400 and response.json()["error"]["param"] == field, field
    assert "suffix" in COMPLETION_FIELDS


def test_completion_usage_is_logged_and_limits_apply(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True})
    events = list(iter_events(response.text.splitlines()))
    assert events[-1].done and all(e.json()["object"] == "text_completion" for e in events[:-1])


def test_tokenize_and_detokenize(http: httpx.Client, model_name: str) -> None:
    prompt = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert prompt["count"] == len(prompt["tokens"]) == len(prompt["token_strs"]) and prompt["max_model_len"] == 2048
    assert http.post("/detokenize", json={"tokens": prompt["tokens"]}).json()["prompt"] == "Hello world"
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    completion = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 1}).json()
    assert chat["count"] == completion["usage"]["prompt_tokens"]  # exactly what the chat route renders
    assert http.post("/detokenize", json={"tokens": [10**9]}).status_code == 400
    assert http.post("/tokenize", json={"prompt": "x", "model": "other"}).status_code == 404


def test_health_version_and_model_card(server_url: str, http: httpx.Client) -> None:
    assert httpx.get(f"{server_url}/health").status_code == 200  # open, even with auth on
    version = httpx.get(f"{server_url}/version").json()
    assert version["version"] and version["vllm_version"] == "0.32.0"
    card = http.get("/v1/models").json()["data"][0]
    assert card["max_model_len"] == 2048 and card["root"].endswith("SmolLM2-135M-Instruct")
    assert card["owned_by"] and card["permission"][0]["object"] == "model_permission"
