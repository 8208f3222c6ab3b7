"""Every bad request gets a clear 4xx in the one error envelope, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


def assert_envelope(response: httpx.Response, status: int, *, param: str | None = None,
                    mentions: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param", "path"}
    assert error["code"] == status and error["path"] == response.request.url.path
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if mentions is not None:
        assert mentions in error["message"]
    return error


@pytest.mark.parametrize("body, mentions", [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "Expected `object`"),
])
def test_malformed_bodies(http: httpx.Client, body: bytes, mentions: str) -> None:
    assert_envelope(http.post(CHAT, content=body), 400, mentions=mentions)


@pytest.mark.parametrize("payload, param", [
    ({}, None),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),  # the missing field is named
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": HELLO, "max_completion_tokens": -3}, "max_completion_tokens"),
    ({"messages": HELLO, "temperature": 3}, "temperature"),
    ({"messages": HELLO, "top_p": 0}, "top_p"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": HELLO, "n": 1000}, "n"),
    ({"messages": HELLO, "presence_penalty": 5}, "presence_penalty"),
    ({"messages": HELLO, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ({"messages": HELLO, "stream": "yes"}, "stream"),
    ({"messages": HELLO, "stop": [1, 2]}, "stop[0]"),
    ({"messages": HELLO, "seed": 1.5}, "seed"),
    ({"messages": HELLO, "seed": 2**70}, "seed"),
    ({"messages": HELLO, "top_k": 10**30}, "top_k"),
    ({"messages": HELLO, "max_tokens": 10**20}, "max_tokens"),
])
def test_schema_violations(http: httpx.Client, payload: dict[str, object], param: str | None) -> None:
    assert_envelope(http.post(CHAT, json=payload), 400, param=param)


@pytest.mark.parametrize("payload, param, mentions", [
    ({"messages": []}, "messages", "at least one"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages", "user message"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs", "logprobs"),
    ({"messages": HELLO, "stop": [""]}, "stop", "empty"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "image_url"),
    ({"messages": HELLO, "max_tokens": 100_000}, "messages", "context"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, "messages", "context"),
    ({"messages": HELLO, "max_tokens": 100_000, "stream": True}, "messages", "context"),
])
def test_semantic_errors(http: httpx.Client, payload: dict[str, object], param: str, mentions: str) -> None:
    assert_envelope(http.post(CHAT, json=payload), 400, param=param, mentions=mentions)


def test_unknown_model_is_404(http: httpx.Client) -> None:
    assert_envelope(http.post(CHAT, json={"messages": HELLO, "model": "gpt-9"}), 404, param="model",
                    mentions="gpt-9")


def test_body_over_limit_by_content_length(http: httpx.Client) -> None:
    # The test server runs with max_body_bytes=65536.
    big = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_envelope(http.post(CHAT, json=big), 413, mentions="65536")


def test_body_over_limit_when_chunked(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'

    assert_envelope(http.post(CHAT, content=chunks()), 413)


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.get(CHAT), 405)


def test_openai_sdk_reads_the_envelope(server_url: str, admin_key: str) -> None:
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[], max_tokens=4)
    assert caught.value.status_code == 400
    assert "at least one" in caught.value.message


def test_server_still_serves_after_bad_input(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"messages": HELLO, "max_tokens": 4})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 4
