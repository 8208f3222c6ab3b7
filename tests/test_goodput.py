"""SLO-aware admission on the real engine, deliberately small (two sequence slots, a 1 s TTFT budget) so that a
burst overloads it at once: below capacity nothing is refused; past it the excess is refused at once (503 with
Retry-After, answered before any engine work, in well under the time one generation takes) and the rest is served;
the openai SDK, whose retries honour Retry-After, ends up served for every request of a burst."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from conftest import free_port
from servers import EARLY, SpawnedServer

CHAT = "/v1/chat/completions"
TTFT_BUDGET_S = 1.0
# About a second of decoding on the CPU engine: a burst past two slots must wait longer than the budget.
BODY = {"model": "codeface", "messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 48,
        "ignore_eos": True}
# A refusal costs no engine work: answered in a fraction of the time one generation takes.
REFUSAL_BOUND_S = 0.5


def build_goodput_server(request: pytest.FixtureRequest) -> SpawnedServer:
    from storage import upgrade_database

    folder = request.getfixturevalue("tmp_path_factory").mktemp("goodput")
    database_url = f"sqlite+aiosqlite:///{folder}/goodput.db"
    upgrade_database(database_url)
    settings = {"auth_enabled": False, "max_num_seqs": 2, "kv_cache_space_gib": 1, "slo_ttft_s": TTFT_BUDGET_S,
                "served_model_name": "codeface"}
    return SpawnedServer(free_port(), folder / "server.log", database_url=database_url, settings=settings)


goodput_server = EARLY.fixture("goodput_server", build_goodput_server)


@pytest.fixture(scope="module")
def url(goodput_server: SpawnedServer) -> Iterator[str]:
    yield goodput_server.url


def refusals(metrics: str) -> float:
    return sum(float(value) for value in re.findall(r'^codeface_slo_refusals_total\{[^}]*\} (\S+)$', metrics, re.M))


async def timed(http: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await http.post(CHAT, json=BODY)
    return response, time.perf_counter() - started


async def test_a_burst_past_capacity_is_refused_at_once_and_the_rest_served(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        # Below capacity (one, then two at a time: the engine's slots): nothing refused; the rates get measured.
        for size in (1, 1, 2, 2):
            statuses = [r.status_code for r, _ in await asyncio.gather(*(timed(http) for _ in range(size)))]
            assert statuses == [200] * size
        before = refusals((await http.get("/metrics")).text)
        assert before == 0
        results = await asyncio.gather(*(timed(http) for _ in range(12)))
        served = [elapsed for r, elapsed in results if r.status_code == 200]
        refused = [(r, elapsed) for r, elapsed in results if r.status_code != 200]
        assert len(served) >= 2 and len(refused) >= 4, [r.status_code for r, _ in results]
        for response, elapsed in refused:
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1, response.text
            assert "time to the first token" in response.json()["error"]["message"]
            assert elapsed < REFUSAL_BOUND_S, elapsed
        assert max(elapsed for _, elapsed in refused) < statistics.median(served)
        metrics = (await http.get("/metrics")).text
    assert refusals(metrics) == len(refused)
    assert "codeface_slo_ttft_observed_over_estimate_count" in metrics


async def test_the_openai_sdk_retries_after_refusals_until_served(url: str) -> None:
    """Eight at once on two slots: some are refused, and the SDK's retries (honouring Retry-After) get every one
    served."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        before = refusals((await http.get("/metrics")).text)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=20, timeout=120)
    extra = {"ignore_eos": True}
    replies = await asyncio.gather(*(client.chat.completions.create(
        model="codeface", messages=BODY["messages"], max_tokens=48, extra_body=extra) for _ in range(8)))
    await client.close()
    assert all(reply.choices[0].finish_reason == "length" for reply in replies)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        after = refusals((await http.get("/metrics")).text)
    assert after > before  # the SDK was refused on the way, and its retries got through
