"""The chat route, a minimal conversation for it, and the check of the error envelope every refusal has."""

from __future__ import annotations

import httpx

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


def assert_envelope(response: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param", "path"} and error["code"] == status
    assert error["path"] == response.request.url.path
    if param is not None:
        assert error["param"] == param
    return error
