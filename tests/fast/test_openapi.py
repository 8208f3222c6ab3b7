"""The OpenAPI document: every mounted route is in it, it is valid OpenAPI 3.1, and the fast tier's answers
conform to the response types it documents."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from starlette.routing import Route

from server.apis.endpoint import Link, Method, Operation
from server.apis.routing import ENDPOINTS
from server.openapi import schemas as responses
from server.openapi.document import openapi_document

from fast.fake_engine import FAKE_MODEL


async def test_every_route_is_documented(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    documented = {(op.path, op.method.upper()) for op in ENDPOINTS}
    undocumented = {(route.path, method) for route in app.routes if isinstance(route, Route)
                    for method in route.methods or () if method != "HEAD"
                    and route.path not in ("/openapi.json", "/docs", "/")} - documented
    assert undocumented == set()


def test_the_document_is_valid_openapi() -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    document = openapi_document("0.0.0", ENDPOINTS)
    assert document["openapi"] == "3.1.0" and document["info"]["version"] == "0.0.0"
    assert set(document["paths"]) == {endpoint.path for endpoint in ENDPOINTS}
    validate(document)
    # The validator judges this document as OpenAPI 3.1: the same document without its info object is refused.
    with pytest.raises(OpenAPIValidationError, match=r'^"info" is a required property'):
        validate({key: value for key, value in document.items() if key != "info"})


async def test_answers_conform_to_the_documented_types(client: httpx.AsyncClient) -> None:
    chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 3, "logprobs": True, "top_logprobs": 1})
    assert chat.status_code == 200, chat.text
    chat_body = msgspec.convert(chat.json(), responses.ChatCompletion)
    assert (chat_body.object, chat_body.model, chat_body.usage.completion_tokens) == ("chat.completion", FAKE_MODEL, 3)
    completion = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "logprobs": 1})
    assert completion.status_code == 200, completion.text
    completion_body = msgspec.convert(completion.json(), responses.Completion)
    assert (completion_body.object, completion_body.usage.completion_tokens) == ("text_completion", 3)
    models = msgspec.convert((await client.get("/v1/models")).json(), responses.ModelList)
    assert [model.id for model in models.data] == [FAKE_MODEL]
    ready = msgspec.convert((await client.get("/readyz")).json(), responses.Ready)
    assert (ready.status, ready.model) == ("ready", FAKE_MODEL)
    created = await client.post("/api/v1/conversations", json={})
    assert created.status_code == 201, created.text
    conversation = msgspec.convert(created.json(), responses.ConversationView)
    reply = await client.post(f"/api/v1/conversations/{conversation.id}/messages", json={"content": "hi"})
    assert reply.status_code == 201, reply.text
    result = msgspec.convert(reply.json(), responses.ReplyResult)
    assert result.conversation_id == conversation.id and result.user_message.content == "hi"


async def test_docs_page_is_self_hosted(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and "/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js" in page.text
    assert "https://" not in page.text  # no CDN: the page works offline
    assert "script-src 'self'" in page.headers["content-security-policy"]
    bundle = await client.get("/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/openapi.json")).json()["openapi"] == "3.1.0"


def test_a_streamed_post_and_its_links_are_documented() -> None:
    """A message posted with stream: true answers 200 (the stateful fuzzing found it undocumented), and both answers
    link to the reply's resume and cancel by its X-Message-ID."""
    post = openapi_document("0.0.0", ENDPOINTS)["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]
    assert list(post["responses"]["200"]["content"]) == ["text/event-stream"]
    assert list(post["responses"]["201"]["content"]) == ["application/json"]
    for status in ("200", "201"):
        links = post["responses"][status]["links"]
        assert links["Cancel"]["parameters"]["message_id"] == "$response.header.X-Message-ID"
        assert links["Resume"]["operationId"] == "get__api_v1_conversations_conversation_id_stream"


async def test_the_documented_limits_are_the_enforced_ones(client: httpx.AsyncClient) -> None:
    """A query limit is declared once: the route refuses just past the maximum the document states."""
    paths = openapi_document("0.0.0", ENDPOINTS)["paths"]
    conversation = (await client.post("/api/v1/conversations", json={})).json()["id"]
    for template, path in (("/api/v1/conversations", "/api/v1/conversations"),
                           ("/api/v1/conversations/{conversation_id}", f"/api/v1/conversations/{conversation}")):
        limit = next(p["schema"] for p in paths[template]["get"]["parameters"] if p["name"] == "limit")
        assert (await client.get(path, params={"limit": limit["maximum"]})).status_code == 200
        assert (await client.get(path, params={"limit": limit["minimum"]})).status_code == 200
        too_many = await client.get(path, params={"limit": limit["maximum"] + 1})
        assert too_many.status_code == 400 and too_many.json()["param"] == "limit", too_many.text
        assert (await client.get(path, params={"limit": limit["minimum"] - 1})).status_code == 400


def test_a_link_that_leads_nowhere_is_refused() -> None:
    stray = Operation(Method.GET, "/stray", "A route linking to nothing", "test",
                      links=(Link("Nowhere", Method.GET, "/nowhere"),))
    with pytest.raises(ValueError, match="Nowhere"):
        openapi_document("0.0.0", [*ENDPOINTS, stray(ENDPOINTS[0].handler)])
