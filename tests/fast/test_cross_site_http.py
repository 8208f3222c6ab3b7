"""Another web page cannot drive the server (auth off, the default profile): a Host it does not answer to is a 400
(DNS rebinding), a browser's foreign Origin a 403, a body that is not JSON a 415, and none of them starts a
generation; the loopback names, IP addresses, configured hosts and origins, and the login form keep working."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fast.fake_engine import FakeEngine

CHAT = "/v1/chat/completions"
CONVERSATIONS = "/api/v1/conversations"
TOKEN = "/api/v1/auth/token"
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
ATTACKER = "http://attacker.example"


def assert_refused(response: httpx.Response, status: int, param: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param and error["path"] == response.request.url.path


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "localhost.attacker.example",
                                  "127.0.0.1.nip.io:8000", "fast.test.attacker.example", "bad host", "[::1",
                                  "localhost:port"])
async def test_a_host_it_does_not_answer_to_is_400(client: httpx.AsyncClient, engine: FakeEngine,
                                                    host: str) -> None:
    for method, path, body in (("GET", CONVERSATIONS, None), ("GET", "/", None), ("GET", "/v1/models", None),
                               ("POST", CHAT, HELLO), ("POST", CONVERSATIONS, {})):
        assert_refused(await client.request(method, path, json=body, headers={"Host": host}), 400, "Host")
    assert engine.prepared == []
    assert (await client.get(CONVERSATIONS)).json()["data"] == []  # nothing was created either


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "localhost.:8000", "app.localhost:3000",
                                  "127.0.0.1:8000", "127.0.0.1", "[::1]:8000", "[::1]", "192.168.1.5:8000",
                                  "fast.test", "fast.test:8443"])
async def test_loopback_ip_and_configured_hosts_are_served(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get(CONVERSATIONS, headers={"Host": host})).status_code == 200
    assert (await client.get("/", headers={"Host": host})).status_code == 200


async def test_configured_domains_and_any(client_for: Callable[..., httpx.AsyncClient], engine: FakeEngine) -> None:
    async with client_for(engine, allowed_hosts=[".example.com", "codeface"]) as http:
        for host in ("example.com", "api.example.com:8000", "Codeface:8000"):
            assert (await http.get(CONVERSATIONS, headers={"Host": host})).status_code == 200, host
        for host in ("evil-example.com", "example.com.evil.test", "fast.test", "codeface-b"):
            assert_refused(await http.get(CONVERSATIONS, headers={"Host": host}), 400, "Host")
    async with client_for(engine, allowed_hosts=["*"]) as http:
        assert (await http.get(CONVERSATIONS, headers={"Host": "anything.example:1"})).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/json", "application/jsonx"])
async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient, engine: FakeEngine,
                                              content_type: str) -> None:
    conversation_id = (await client.post(CONVERSATIONS, json={})).json()["id"]
    for path, body in ((CHAT, HELLO), (f"{CONVERSATIONS}/{conversation_id}/messages", {"content": "hi"}),
                       ("/api/v1/chat", {"message": "hi"}), (CONVERSATIONS, {}), ("/tokenize", {"prompt": "hi"})):
        for origin in ({"Origin": ATTACKER}, {}):  # the cross-site form post, and the same from any client
            response = await client.post(path, json=body, headers={"Content-Type": content_type, **origin})
            assert_refused(response, 415, "Content-Type")
    assert engine.prepared == []
    assert len((await client.get(CONVERSATIONS)).json()["data"]) == 1


async def test_json_media_types_are_read(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        response = await client.post(CHAT, json=HELLO, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
    conversation_id = (await client.post(CONVERSATIONS, json={})).json()["id"]
    renamed = await client.patch(f"{CONVERSATIONS}/{conversation_id}", json={"title": "t"},
                                 headers={"Content-Type": "application/merge-patch+json"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "t"
    # No Content-Type: read as JSON, as FastAPI (vllm serve) does; a body-less POST is no body at all.
    assert (await client.post(CHAT, content=b'{"messages": [{"role": "user", "content": "hi"}]}')).status_code == 200
    assert (await client.post(CONVERSATIONS)).status_code == 201
    assert len(engine.prepared) == 4


@pytest.mark.parametrize("origin", [ATTACKER, "http://attacker.example:8000", "null", "http://fast.test:8080",
                                    "https://fast.test.attacker.example", "file://", "garbage"])
async def test_a_foreign_origin_is_403(client: httpx.AsyncClient, engine: FakeEngine, origin: str) -> None:
    for method, path, body in (("POST", CHAT, HELLO), ("POST", CONVERSATIONS, {}), ("GET", CONVERSATIONS, None),
                               ("POST", CHAT, None)):
        response = await client.request(method, path, json=body, headers={"Origin": origin})
        assert_refused(response, 403, "Origin")
    # No Content-Type at all (a fetch of a typeless Blob needs no preflight either): the Origin stops it.
    assert_refused(await client.post(CHAT, content=b'{"messages": []}', headers={"Origin": origin}), 403, "Origin")
    assert engine.prepared == []
    assert (await client.get(CONVERSATIONS)).json()["data"] == []


@pytest.mark.parametrize("host, origin", [("fast.test", "http://fast.test"), ("fast.test", "https://fast.test"),
                                          ("localhost:8000", "http://localhost:8000"),
                                          ("localhost:443", "https://localhost"), ("[::1]:8000", "http://[::1]:8000"),
                                          ("127.0.0.1:8000", "http://127.0.0.1:8000/")])
async def test_the_servers_own_pages_are_served(client: httpx.AsyncClient, host: str, origin: str) -> None:
    response = await client.post(CHAT, json=HELLO, headers={"Host": host, "Origin": origin})
    assert response.status_code == 200, response.text


async def test_configured_origins_agree_with_cors(client_for: Callable[..., httpx.AsyncClient],
                                                  engine: FakeEngine) -> None:
    app_origin = "https://app.example"
    async with client_for(engine, cors_allow_origins=[app_origin]) as http:
        response = await http.post(CHAT, json=HELLO, headers={"Origin": app_origin})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == app_origin
        preflight = await http.options(CHAT, headers={"Origin": app_origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200
        # A refusal reaches the allowed page with its CORS headers, so that it can read why.
        refused = await http.post(CHAT, content=b"{}", headers={"Origin": app_origin, "Content-Type": "text/plain"})
        assert refused.status_code == 415 and refused.headers["access-control-allow-origin"] == app_origin
        assert_refused(await http.post(CHAT, json=HELLO, headers={"Origin": ATTACKER}), 403, "Origin")
    async with client_for(engine, cors_allow_origins=["*"]) as http:
        assert (await http.post(CHAT, json=HELLO, headers={"Origin": ATTACKER})).status_code == 200


async def test_the_login_form_keeps_working(client_for: Callable[..., httpx.AsyncClient], engine: FakeEngine) -> None:
    async with client_for(engine, auth_enabled=True) as http:
        wrong = await http.post(TOKEN, data={"username": "nobody", "password": "wrong"})
        assert wrong.status_code == 401, wrong.text
        multipart = await http.post(TOKEN, files={"username": (None, "nobody"), "password": (None, "wrong")})
        assert multipart.status_code == 401, multipart.text
        assert_refused(await http.post(TOKEN, json={"username": "nobody", "password": "wrong"}), 415, "Content-Type")


def test_the_document_lists_these_refusals() -> None:
    from server.apis.routing import ENDPOINTS
    from server.openapi.document import openapi_document

    for path, operations in openapi_document("0.0.0", ENDPOINTS)["paths"].items():
        for method, operation in operations.items():
            listed = set(operation["responses"])
            assert {"400", "403"} <= listed, (method, path)
            assert ("415" in listed) == (method in ("post", "patch", "delete")), (method, path)
