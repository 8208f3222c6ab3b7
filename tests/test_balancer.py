"""Two real replicas (two `codeface serve` processes with engines of their own, one Postgres, one Redis) behind a
real nginx that sends each request to the next replica in turn (round robin, no sticky routing; a response header
names the replica that answered): a stream started on one resumes on the other with no gap or duplicate, a cancel
that reaches the other stops the reply, the seed's stream route on one receives a reply generated on the other, a
key's limits hold across both, and the login guard counts the client's address (X-Forwarded-For), not nginx's."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import free_port, server_settings, unavailable
from servers import SpawnedServer
from test_conversations import API, SSEReader, new_conversation, wait_for_status

SECRET = "test-secret-key-with-enough-entropy-0123456789"
UPSTREAM = "x-upstream"  # set by nginx: the replica that answered
LOGINS_PER_ADDRESS = 5
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  upstream codeface {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://codeface;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_read_timeout 300s;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
"""


class Nginx:
    def __init__(self, folder: Path, upstreams: tuple[int, int]) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            unavailable("no nginx: install Debian's nginx package (.ci/run does)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, a=upstreams[0], b=upstreams[1], port=self.port))
        self.process = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError(f"nginx did not start: {(folder / 'error.log').read_text(errors='replace')}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, server_database_url: str,
             redis_url: str) -> Iterator[list[SpawnedServer]]:
    folder = tmp_path_factory.mktemp("replicas")
    settings = {"auth_enabled": "true", "secret_key": SECRET, "rate_limit_storage": redis_url,
                "reply_streams_url": redis_url, "scheduling_policy": "fcfs", "conversation_grace_s": 3.0,
                "login_attempts_per_minute_per_address": LOGINS_PER_ADDRESS,
                "login_attempts_per_minute_per_username": 1000}
    servers = [SpawnedServer(free_port(), folder / f"replica-{name}.log", database_url=server_database_url,
                             settings=settings) for name in "ab"]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # both engines load at once
            list(pool.map(lambda server: server.start(), servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory, replicas: list[SpawnedServer]) -> Iterator[str]:
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), (replicas[0].port, replicas[1].port))
    try:
        yield nginx.url
    finally:
        nginx.stop()


@pytest.fixture
def http(balancer: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=balancer, headers=auth_headers, timeout=120) as client:
        yield client


def test_round_robin_alternates_replicas(http: httpx.Client) -> None:
    served_by = [http.get("/v1/models").headers[UPSTREAM] for _ in range(4)]
    assert served_by[0] == served_by[2] and served_by[1] == served_by[3] and served_by[0] != served_by[1], served_by


def test_a_stream_resumes_through_the_balancer_on_the_other_replica(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Tell me a long story.", "stream": True, "max_tokens": 120, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        generating = response.headers[UPSTREAM]
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        first = [reader.next() for _ in range(5)]
    with http.stream("GET", f"{API}/{conversation_id}/stream", params={"message_id": message_id},
                     headers={"Last-Event-ID": str(reader.last_id)}) as resumed:
        assert resumed.status_code == 200, resumed.read()
        assert resumed.headers[UPSTREAM] != generating
        rest = SSEReader(resumed).rest()
    assert [e.id for e in rest] == list(range(6, 6 + len(rest)))  # no duplicate, no gap
    assert rest[-1].event == "message.completed" and rest[-1].data["completion_tokens"] == 120
    streamed = "".join(e.data["delta"] for e in first + rest[:-1])
    assert wait_for_status(http, conversation_id, message_id)["content"] == streamed


def test_a_cancel_through_the_balancer_stops_the_reply_on_the_other_replica(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Go on.", "stream": True, "max_tokens": 1500, "ignore_eos": True}
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        generating = response.headers[UPSTREAM]
        message_id = response.headers["x-message-id"]
        reader = SSEReader(response)
        reader.next()
        cancelled = http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.headers[UPSTREAM] != generating
        rest = reader.rest()
    assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "cancelled"
    assert 0 < rest[-1].data["completion_tokens"] < 1500


async def test_the_seed_stream_gets_a_reply_generated_on_the_other_replica(balancer: str,
                                                                           auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=balancer, headers=auth_headers, timeout=120) as client:
        conversation_id = (await client.post(API, json={"title": "seed"})).json()["id"]
        events: list[dict] = []
        listening_on: list[str] = []

        async def listen() -> None:
            async with client.stream("GET", f"/api/v1/stream/{conversation_id}") as attached:
                listening_on.append(attached.headers[UPSTREAM])
                async for line in attached.aiter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[len("data:"):]))
                        if events[-1]["type"] == "message.completed":
                            return

        listener = asyncio.create_task(listen())
        while not listening_on:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        posted = await client.post("/api/v1/chat", json={"message": "Hello there", "conversation_id": conversation_id})
        assert posted.status_code == 200, posted.text
        assert posted.headers[UPSTREAM] != listening_on[0]
        await asyncio.wait_for(listener, 120)
    assert [e["type"] for e in events[:-1]] == ["message.delta"] * (len(events) - 1) and len(events) > 1
    assert "".join(e["delta"] for e in events[:-1]) == posted.json()["reply"]


def new_key(database_url: str, redis_url: str, limits: dict[str, int]) -> str:
    from server import admin

    settings = server_settings(database_url, redis_url)
    username = f"lb-{uuid.uuid4().hex[:8]}"
    asyncio.run(admin.create_user(settings, username, "balancer-password-1", False))
    return asyncio.run(admin.create_key(settings, username, "lb", None, limits))


def test_a_keys_limits_hold_across_both_replicas(balancer: str, server_database_url: str, redis_url: str) -> None:
    key = new_key(server_database_url, redis_url, {"requests_per_minute": 4})
    with httpx.Client(base_url=balancer, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        answers = [client.get("/v1/models") for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    assert len({a.headers[UPSTREAM] for a in answers[:4]}) == 2  # counted on both replicas


def test_the_login_guard_counts_the_client_behind_the_balancer(balancer: str) -> None:
    def logins(source: str, attempts: int) -> list[int]:
        transport = httpx.HTTPTransport(local_address=source)  # a loopback address of its own: another client
        with httpx.Client(base_url=balancer, transport=transport, timeout=30) as client:
            return [client.post("/api/v1/auth/token", data={"username": "nobody-here", "password": "wrong-password"})
                    .status_code for _ in range(attempts)]

    flooded = logins("127.0.0.2", LOGINS_PER_ADDRESS + 2)
    assert flooded[:LOGINS_PER_ADDRESS] == [401] * LOGINS_PER_ADDRESS and flooded[-1] == 429, flooded
    # Without X-Forwarded-For trusted, every client would be nginx's 127.0.0.1 and locked out together.
    assert logins("127.0.0.3", 1) == [401]
