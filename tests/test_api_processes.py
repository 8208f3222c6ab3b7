"""`api_processes: 2` (`codeface serve` in a process of its own, Postgres, Redis): one engine core, two API processes
on one port through vLLM's multi-API-server machinery. The openai SDK tests pass through it, connections spread over
both processes, /metrics adds both up, a key's limits hold across them, and SIGTERM to the launcher drains both
(running streams finish, then every process exits)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest

# The openai SDK tests, run again here against the two API processes (their fixtures resolve to this module's).
from test_chat import (  # noqa: F401
    async_client,
    client,
    test_async_client_non_stream,
    test_async_client_sixteen_concurrent_streams,
    test_greedy_is_deterministic,
    test_ignore_eos_produces_exactly_max_tokens,
    test_max_tokens_gives_length,
    test_n_choices_and_logprobs,
    test_non_stream,
    test_seed_makes_sampling_repeatable,
    test_stop_sequence,
    test_stream_with_usage,
    test_stream_without_usage_has_no_usage_chunk,
)
from test_chat_api import (  # noqa: F401
    test_auto_with_the_hermes_parser_and_a_tool_loop,
    test_forced_tool_call_validates_and_streams_the_same,
    test_parse_with_a_pydantic_model,
)

from conftest import ROOT, free_port
from servers import SpawnedServer

SECRET = "test-secret-key-with-enough-entropy-0123456789"  # the suite's: admin_key's key verifies here too
ENGINE_CORE = "VLLM::EngineCore"
API_PROCESS = re.compile(r"VLLM::APIServer_\d")
LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "ignore_eos": True,
        "stream": True}


@pytest.fixture(scope="module")
def api_processes(tmp_path_factory: pytest.TempPathFactory, server_database_url: str,
                  redis_url: str) -> Iterator[SpawnedServer]:
    settings = {"api_processes": 2, "auth_enabled": "true", "secret_key": SECRET, "max_body_bytes": 65536,
                "rate_limit_storage": redis_url, "reply_streams_url": redis_url, "scheduling_policy": "fcfs",
                "tool_call_parser": "hermes", "enable_auto_tool_choice": "true",
                "chat_template": ROOT / "configs/templates/smollm2_hermes_tools.jinja", "drain_timeout_s": 30}
    log = tmp_path_factory.mktemp("api-processes") / "server.log"
    server = SpawnedServer(free_port(), log, database_url=server_database_url, settings=settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_url(api_processes: SpawnedServer) -> str:
    return api_processes.url


@pytest.fixture(scope="module")
def model_name(server_url: str, auth_headers: dict[str, str]) -> str:
    return str(httpx.get(f"{server_url}/v1/models", headers=auth_headers).json()["data"][0]["id"])


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
    from server import admin

    from conftest import server_settings

    settings = server_settings(server_database_url, redis_url)
    username = f"rpm-{uuid.uuid4().hex[:8]}"
    asyncio.run(admin.create_user(settings, username, "rpm-password-1", False))
    key = asyncio.run(admin.create_key(settings, username, "rpm", None, {"requests_per_minute": 4}))
    statuses = []
    for _ in range(6):  # a new connection each: they alternate between the two processes
        with httpx.Client(base_url=api_processes.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            statuses.append(http.get("/v1/models").status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


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
