"""The default profile (auth off) on a real uvicorn server: another web page cannot drive it. The two requests a new
user tried (curl with a rebinding Host; a cross-site text/plain POST) are refused, and nothing is created; the chat
page, the loopback names, a configured host and same-origin calls keep working."""

from __future__ import annotations

import uuid

import httpx
import pytest

CONVERSATIONS = "/api/v1/conversations"
ATTACKER = "http://attacker.example"


@pytest.fixture(scope="module")
def solo(start_replica, sqlite_server_database_url: str, redis_url: str) -> str:
    """auth off as configs/cpu.yaml has it, one configured host besides the loopback names."""
    return start_replica(sqlite_server_database_url, redis_url, auth_enabled=False,
                         default_user=f"solo-{uuid.uuid4().hex[:6]}", allowed_hosts=["codeface.lan"])


def test_a_rebinding_host_is_400_and_a_cross_site_post_415(solo: str) -> None:
    port = httpx.URL(solo).port
    with httpx.Client(base_url=solo, timeout=30) as http:
        rebound = http.get(CONVERSATIONS, headers={"Host": f"attacker.example:{port}"})
        assert rebound.status_code == 400, rebound.text
        assert rebound.json()["error"]["param"] == "Host"
        # What a page on attacker.example sends with fetch(..., {mode: "no-cors", body: JSON.stringify(...)}).
        form_post = http.post(CONVERSATIONS, content=b'{"title": "planted"}',
                              headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": ATTACKER})
        assert form_post.status_code == 415, form_post.text
        foreign = http.post(CONVERSATIONS, json={"title": "planted"}, headers={"Origin": ATTACKER})
        assert foreign.status_code == 403, foreign.text
        assert http.get(CONVERSATIONS).json()["data"] == []  # nothing was planted


def test_the_chat_page_local_names_and_configured_host_still_work(solo: str) -> None:
    port = httpx.URL(solo).port
    with httpx.Client(base_url=solo, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"codeface.lan:{port}"):
            assert http.get(CONVERSATIONS, headers={"Host": host}).status_code == 200, host
        # The chat page's own calls: same origin.
        own = http.post(CONVERSATIONS, json={"title": "mine"}, headers={"Origin": f"http://localhost:{port}",
                                                                        "Host": f"localhost:{port}"})
        assert own.status_code == 201, own.text
