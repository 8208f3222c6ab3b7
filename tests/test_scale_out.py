"""Past one process and one machine, with real parts: replica A is the suite's server (in this process), replica B
is `codeface serve` with `api_processes: 2` (one engine core, two API processes on one port through vLLM's
multi-API-server machinery), both on one Postgres and one Redis, behind a real nginx that sends each request to the
next replica in turn (round robin, no sticky routing; a response header names the replica that answered).

Through the balancer: a stream started on one replica resumes on the other with no gap or duplicate, a cancel that
reaches the other stops the reply, the seed's stream route on one receives a reply generated on the other, a key's
limits hold across both, and the login guard counts the client's address (X-Forwarded-For), not nginx's. Behind
HAProxy with the shipped deploy/haproxy.cfg: one prompt_cache_key stays on one replica, many keys use both, a
request without a key is served round robin. On B alone:
the openai SDK tests pass, connections spread over both API processes, /metrics adds both up, and SIGTERM to the
launcher drains both (running streams finish, then every process exits)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from conftest import ROOT, UNLIMITED, free_port, server_settings, unavailable, user_with_key
from servers import EARLY, SpawnedServer
from support.conversation_client import API, SeedListener, SSEReader, new_conversation, wait_for_status
from support.haproxy import HAProxy, haproxy_binary

# The openai SDK tests, run again here against the two API processes (`client` and `async_client` below).
from support.sdk_contract import (  # noqa: F401
    test_async_client_non_stream,
    test_async_client_sixteen_concurrent_streams,
    test_auto_with_the_hermes_parser_and_a_tool_loop,
    test_forced_tool_call_validates_and_streams_the_same,
    test_greedy_is_deterministic,
    test_ignore_eos_produces_exactly_max_tokens,
    test_max_tokens_gives_length,
    test_n_choices_and_logprobs,
    test_non_stream,
    test_parse_with_a_pydantic_model,
    test_seed_makes_sampling_repeatable,
    test_stop_sequence,
    test_stream_with_usage,
    test_stream_without_usage_has_no_usage_chunk,
)

SECRET = "test-secret-key-with-enough-entropy-0123456789"
UPSTREAM = "x-upstream"  # set by nginx: the replica that answered
LOGINS_PER_ADDRESS = 5
# Replica B's share of admission per user (max_inflight_sequences_per_user): counted across its two API processes.
USER_SEQUENCES = 20
MAX_N = 16  # vLLM's largest n
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
ENGINE_CORE = "VLLM::EngineCore"
API_PROCESS = re.compile(r"VLLM::APIServer_\d")
LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "ignore_eos": True,
        "stream": True}


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


def build_replica_b(request: pytest.FixtureRequest) -> SpawnedServer:
    """Replica B: the suite's settings (its secret, so that admin_key verifies), two API processes, a login
    guard of 5 tries a minute per address, and a share of admission of 20 sequences per user."""
    redis_url = request.getfixturevalue("redis_url")
    settings = {"api_processes": 2, "auth_enabled": "true", "secret_key": SECRET, "max_body_bytes": 65536,
                "rate_limit_storage": redis_url, "reply_streams_url": redis_url, "scheduling_policy": "fcfs",
                "conversation_grace_s": 3.0, "tool_call_parser": "hermes", "enable_auto_tool_choice": "true",
                "chat_template": ROOT / "configs/templates/smollm2_hermes_tools.jinja", "drain_timeout_s": 30,
                "kv_cache_space_gib": 1, "login_attempts_per_minute_per_address": LOGINS_PER_ADDRESS,
                "login_attempts_per_minute_per_username": 1000, "metrics_public": True,
                "max_inflight_sequences_per_user": USER_SEQUENCES}
    log = request.getfixturevalue("tmp_path_factory").mktemp("api-processes") / "server.log"
    return SpawnedServer(free_port(), log, database_url=request.getfixturevalue("server_database_url"),
                         settings=settings)


api_processes = EARLY.fixture("api_processes", build_replica_b)


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory, running_server, api_processes: SpawnedServer) -> Iterator[str]:
    a_port = int(running_server.url.rsplit(":", 1)[1])
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), (a_port, api_processes.port))
    try:
        yield nginx.url
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def server_url(api_processes: SpawnedServer) -> str:
    """The openai SDK tests' server: replica B."""
    return api_processes.url


@pytest.fixture(scope="module")
def model_name(server_url: str, auth_headers: dict[str, str]) -> str:
    return str(httpx.get(f"{server_url}/v1/models", headers=auth_headers).json()["data"][0]["id"])


@pytest.fixture(scope="module")
def async_client(server_url: str, admin_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key=admin_key, max_retries=0, timeout=120)


@pytest.fixture
def http(balancer: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=balancer, headers=auth_headers, timeout=120) as through:
        yield through


@contextlib.contextmanager
def posted_stream(http: httpx.Client, conversation_id: str, body: dict) -> Iterator[tuple[str, str, SSEReader]]:
    """A streaming post through the balancer: the replica generating, the reply's message id, its events."""
    with http.stream("POST", f"{API}/{conversation_id}/messages", json=body) as response:
        yield response.headers[UPSTREAM], response.headers["x-message-id"], SSEReader(response)


def test_round_robin_alternates_replicas(http: httpx.Client) -> None:
    served_by = [http.get("/v1/models").headers[UPSTREAM] for _ in range(4)]
    assert served_by[0] == served_by[2] and served_by[1] == served_by[3] and served_by[0] != served_by[1], served_by


def test_a_stream_resumes_through_the_balancer_on_the_other_replica(http: httpx.Client) -> None:
    conversation_id = new_conversation(http)
    body = {"content": "Tell me a long story.", "stream": True, "max_tokens": 120, "ignore_eos": True}
    with posted_stream(http, conversation_id, body) as (generating, message_id, reader):
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
    with posted_stream(http, conversation_id, body) as (generating, message_id, reader):
        reader.next()
        cancelled = http.post(f"{API}/{conversation_id}/messages/{message_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.headers[UPSTREAM] != generating
        rest = reader.rest()
    assert rest[-1].event == "message.completed" and rest[-1].data["status"] == "cancelled"
    assert 0 < rest[-1].data["completion_tokens"] < 1500


async def test_the_seed_stream_gets_a_reply_generated_on_the_other_replica(balancer: str,
                                                                           auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=balancer, headers=auth_headers, timeout=120) as through:
        conversation_id = (await through.post(API, json={"title": "seed"})).json()["id"]
        listener = SeedListener(through, f"/api/v1/stream/{conversation_id}")
        listening_on = (await listener.attached())[UPSTREAM]
        posted = await through.post("/api/v1/chat", json={"message": "Hello there", "conversation_id": conversation_id})
        assert posted.status_code == 200, posted.text
        assert posted.headers[UPSTREAM] != listening_on
        assert await listener.reply(120) == posted.json()["reply"]


def new_key(database_url: str, redis_url: str, limits: dict[str, int]) -> str:
    return user_with_key(server_settings(database_url, redis_url), f"lb-{uuid.uuid4().hex[:8]}", limits=limits)


def test_a_keys_limits_hold_across_both_replicas(balancer: str, server_database_url: str, redis_url: str) -> None:
    key = new_key(server_database_url, redis_url, {"requests_per_minute": 4})
    with httpx.Client(base_url=balancer, headers={"Authorization": f"Bearer {key}"}, timeout=30) as through:
        answers = [through.get("/v1/models") for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    assert len({a.headers[UPSTREAM] for a in answers[:4]}) == 2  # counted on both replicas


def test_the_login_guard_counts_the_client_behind_the_balancer(balancer: str, api_processes: SpawnedServer) -> None:
    """Replica B allows 5 tries a minute per address (A, the suite's server, far more): B's answers tell."""
    def logins(source: str, attempts: int) -> list[tuple[int, str]]:
        transport = httpx.HTTPTransport(local_address=source)  # a loopback address of its own: another client
        with httpx.Client(base_url=balancer, transport=transport, timeout=30) as guest:
            answers = [guest.post("/api/v1/auth/token", data={"username": "nobody-here", "password": "wrong"})
                       for _ in range(attempts)]
        return [(answer.status_code, answer.headers[UPSTREAM]) for answer in answers]

    b_upstream = f"127.0.0.1:{api_processes.port}"
    flooded = [status for status, upstream in logins("127.0.0.2", 2 * LOGINS_PER_ADDRESS + 4) if upstream == b_upstream]
    assert flooded[:LOGINS_PER_ADDRESS] == [401] * LOGINS_PER_ADDRESS and flooded[-1] == 429, flooded
    # Without X-Forwarded-For trusted, every client would be nginx's 127.0.0.1 and locked out together on B.
    assert [status for status, upstream in logins("127.0.0.3", 2) if upstream == b_upstream] == [401]



@pytest.fixture(scope="module")
def affinity_balancer(tmp_path_factory: pytest.TempPathFactory, running_server,
                      api_processes: SpawnedServer) -> Iterator[str]:
    binary = haproxy_binary() or ""
    if not binary:
        unavailable("no haproxy: install Debian's haproxy package (.ci/run does)")
    a_port = int(running_server.url.rsplit(":", 1)[1])
    haproxy = HAProxy(binary, tmp_path_factory.mktemp("haproxy"), free_port(), (a_port, api_processes.port))
    try:
        yield haproxy.url
    finally:
        haproxy.stop()


def responses_served(url: str, auth_headers: dict[str, str]) -> float:
    return counter(httpx.get(f"{url}/metrics", headers=auth_headers).text, "codeface_http_requests_total",
                   route="/v1/responses", status="200")


def answered_by(affinity_balancer: str, replicas: dict[str, str], auth_headers: dict[str, str], model_name: str,
                **extra: str) -> str:
    """Posts one response through HAProxy; the replica whose /v1/responses counter moved answered it."""
    before = {name: responses_served(url, auth_headers) for name, url in replicas.items()}
    body = {"model": model_name, "input": "Say hi.", "max_output_tokens": 2, "store": False, **extra}
    answer = httpx.post(f"{affinity_balancer}/v1/responses", json=body, headers=auth_headers, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt_cache_key"] == extra.get("prompt_cache_key")
    (moved,) = [name for name, url in replicas.items() if responses_served(url, auth_headers) > before[name]]
    return moved


@pytest.fixture
def replicas(running_server, api_processes: SpawnedServer) -> dict[str, str]:
    return {"a": running_server.url, "b": api_processes.url}


def test_one_prompt_cache_key_stays_on_one_replica(affinity_balancer: str, replicas: dict[str, str],
                                                   auth_headers: dict[str, str], model_name: str) -> None:
    key = f"session-{uuid.uuid4()}"
    served_by = [answered_by(affinity_balancer, replicas, auth_headers, model_name, prompt_cache_key=key)
                 for _ in range(20)]
    assert len(set(served_by)) == 1, served_by


def test_many_prompt_cache_keys_use_both_replicas(affinity_balancer: str, replicas: dict[str, str],
                                                  auth_headers: dict[str, str], model_name: str) -> None:
    served_by = [answered_by(affinity_balancer, replicas, auth_headers, model_name, prompt_cache_key=f"session-{i}")
                 for i in range(20)]
    assert set(served_by) == {"a", "b"}, served_by
    # Each key again: the same replica as the first time.
    again = [answered_by(affinity_balancer, replicas, auth_headers, model_name, prompt_cache_key=f"session-{i}")
             for i in range(0, 20, 4)]
    assert again == served_by[::4]


def test_a_request_without_a_key_is_served_round_robin(affinity_balancer: str, replicas: dict[str, str],
                                                       auth_headers: dict[str, str], model_name: str) -> None:
    served_by = [answered_by(affinity_balancer, replicas, auth_headers, model_name) for _ in range(8)]
    assert set(served_by) == {"a", "b"}, served_by

def processes(server: SpawnedServer) -> list[psutil.Process]:
    return psutil.Process(server.pid).children(recursive=True)


def held_connections(server: SpawnedServer) -> dict[int, int]:
    """Established connections on the server's port, per API process."""
    return {p.pid: sum(1 for c in p.net_connections("tcp") if c.laddr.port == server.port and c.status == "ESTABLISHED")
            for p in processes(server) if API_PROCESS.match(" ".join(p.cmdline()))}


def counter(metrics: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels` (0 when absent)."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_one_engine_core_serves_two_api_processes(api_processes: SpawnedServer) -> None:
    titles = [" ".join(p.cmdline()) for p in processes(api_processes)]
    assert sum(title.startswith(ENGINE_CORE) for title in titles) == 1, titles
    assert sum(bool(API_PROCESS.match(title)) for title in titles) == 2, titles


def test_connections_spread_and_metrics_add_up(api_processes: SpawnedServer, auth_headers: dict[str, str]) -> None:
    def served_models() -> float:
        return counter(httpx.get(f"{api_processes.url}/metrics").text, "codeface_http_requests_total",
                       route="/v1/models", status="200")

    before = served_models()
    held_before = held_connections(api_processes)
    clients = [httpx.Client(base_url=api_processes.url, headers=auth_headers, timeout=30) for _ in range(4)]
    try:
        for http in clients:  # one held connection each, opened in turn: the least loaded process accepts each
            assert http.get("/v1/models").status_code == 200
        held = held_connections(api_processes)
        assert len(held) == 2 and all(held[pid] > held_before.get(pid, 0) for pid in held), (held_before, held)
        for _ in range(4):
            for http in clients:
                assert http.get("/v1/models").status_code == 200
    finally:
        for http in clients:
            http.close()
    assert served_models() - before == 20  # both processes' requests, whichever answers /metrics


def test_a_keys_limit_holds_across_both_processes(api_processes: SpawnedServer, server_database_url: str,
                                                 redis_url: str) -> None:
    key = new_key(server_database_url, redis_url, {"requests_per_minute": 4})
    statuses = []
    for _ in range(6):  # a new connection each: they alternate between the two processes
        with httpx.Client(base_url=api_processes.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            statuses.append(http.get("/v1/models").status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_a_users_share_of_admission_holds_across_both_processes(api_processes: SpawnedServer,
                                                                       server_database_url: str,
                                                                       redis_url: str) -> None:
    """More than half the share in one generation is admitted (each process used to allow half of it: n=16 of 20
    got 429), and while a generation holds 16 of the 20 on one process, a connection that lands on the other gets 4
    more and no more (each half used to let 10 in there)."""
    key = await asyncio.to_thread(new_key, server_database_url, redis_url, UNLIMITED)
    headers = {"Authorization": f"Bearer {key}"}
    short = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=api_processes.url, headers=headers, timeout=120) as http:
        most = await http.post("/v1/chat/completions", json={**short, "n": MAX_N})
        assert most.status_code == 200, most.text
        assert len(most.json()["choices"]) == MAX_N
        async with http.stream("POST", "/v1/chat/completions", json={**LONG, "n": USER_SEQUENCES - 4}) as held:
            assert held.status_code == 200
            lines = held.aiter_lines()  # held on to: an iterator dropped unfinished closes the connection
            await anext(lines)
            # A second connection while the first is held: the least-loaded accept gives it to the other process.
            async with httpx.AsyncClient(base_url=api_processes.url, headers=headers, timeout=120) as other:
                over = await other.post("/v1/chat/completions", json={**short, "n": 5})
                assert over.status_code == 429, over.text
                assert "max_inflight_sequences_per_user" in over.text and over.headers["retry-after"] == "1"
                within = await other.post("/v1/chat/completions", json={**short, "n": 4})
                assert within.status_code == 200, within.text
            async for _ in lines:
                pass
        # All given back once the generations end (the release lands just after the last event is sent).
        deadline = time.monotonic() + 10
        while (again := await http.post("/v1/chat/completions", json={**short, "n": MAX_N})).status_code == 429:
            assert time.monotonic() < deadline, again.text
            await asyncio.sleep(0.2)
        assert again.status_code == 200, again.text


async def test_sigterm_to_the_launcher_drains_both(api_processes: SpawnedServer, auth_headers: dict[str, str]) -> None:
    """Last in this module: it stops the server."""
    family = processes(api_processes)

    async def stream(started: asyncio.Event) -> list[str]:
        async with (httpx.AsyncClient(base_url=api_processes.url, headers=auth_headers, timeout=120) as http,
                    http.stream("POST", "/v1/chat/completions", json=LONG) as response):
            assert response.status_code == 200
            lines = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    lines.append(line)
                    started.set()
            return lines

    events = [asyncio.Event(), asyncio.Event()]
    streams = [asyncio.create_task(stream(event)) for event in events]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 120)
    api_processes.signal(15)  # the launcher only, as Kubernetes signals PID 1
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=api_processes.url, timeout=10) as probe:
        assert (await probe.get("/readyz")).status_code == 503
    for lines in await asyncio.gather(*streams):
        assert lines[-1] == "data: [DONE]"
        finishes = [line for line in lines if '"finish_reason":"length"' in line]
        assert len(finishes) == 1, lines[-3:]
    assert await asyncio.to_thread(api_processes.wait, 60) == 0
    time.sleep(0.5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
