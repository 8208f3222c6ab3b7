"""SLO-aware admission over the ASGI transport, with a fake engine whose step slows with the batch as a real one
does: below capacity nothing is refused; past it, refusals come at once with Retry-After and before any rendering;
the heaviest tenant gets 429 while a light one is served; the budget headers; the metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from fast.conftest import UNLIMITED
from fast.fake_engine import FakeEngine
from support.openai_envelope import CHAT, HELLO, assert_envelope

# One step: 4 ms, plus 4 ms per sequence in the batch. With a TPOT budget of 40 ms, about 9 sequences fit when the
# server admits up to the whole budget (ADMIT_ALL: the counts below are set by it; the fraction has its own test).
BASE_S, PER_SEQUENCE_S, TPOT_BUDGET_S = 0.004, 0.004, 0.04
ADMIT_ALL = {"slo_admit_fraction": 1.0}
BODY = {"messages": HELLO, "max_tokens": 12, "ignore_eos": True}


class BatchedEngine(FakeEngine):
    """The fake engine with a step time that grows with the number of sequences in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    @property  # type: ignore[override]
    def token_delay_s(self) -> float:
        return BASE_S + PER_SEQUENCE_S * self.in_flight

    @token_delay_s.setter
    def token_delay_s(self, _value: float) -> None:
        pass


async def burst(http: httpx.AsyncClient, count: int, body: dict[str, Any] = BODY,
                headers: dict[str, str] | None = None) -> list[tuple[httpx.Response, float]]:
    async def one() -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = await http.post(CHAT, json=body, headers=headers)
        return response, time.perf_counter() - started

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def warm_up(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> None:
    """Measured rates at batch sizes 1 and 6 (a spread to fit the decode slope on, trusted up to 12)."""
    for size in (1, 6, 1, 6):
        assert all(r.status_code == 200 for r, _ in await burst(http, size, headers=headers))


async def test_below_capacity_nothing_is_refused_past_it_refusals_at_once(client_for) -> None:
    engine = BatchedEngine()
    async with client_for(engine, slo_tpot_s=TPOT_BUDGET_S, **ADMIT_ALL, max_num_seqs=64) as http:
        await warm_up(http)
        for _ in range(3):
            assert all(r.status_code == 200 for r, _ in await burst(http, 6))
        rendered = len(engine.prepared)
        results = await burst(http, 30)
        served = [elapsed for r, elapsed in results if r.status_code == 200]
        refused = [(r, elapsed) for r, elapsed in results if r.status_code != 200]
        assert 6 <= len(served) <= 14 and len(served) + len(refused) == 30
        for response, elapsed in refused:
            error = assert_envelope(response, 503)
            assert "time per output token" in str(error["message"])
            assert int(response.headers["retry-after"]) >= 1
            assert elapsed < min(served)  # answered before any served request ended
        assert len(engine.prepared) - rendered == len(served)  # the refused were never rendered
        metrics = (await http.get("/metrics")).text
        assert 'codeface_slo_refusals_total{model="fake-model",reason="tpot"' in metrics
        assert "codeface_slo_ttft_observed_over_estimate_bucket" in metrics
        # Once the burst is over, room again.
        assert all(r.status_code == 200 for r, _ in await burst(http, 4))


async def test_without_budgets_nothing_is_refused(client_for) -> None:
    engine = BatchedEngine()
    async with client_for(engine, max_num_seqs=64) as http:
        await warm_up(http)
        assert all(r.status_code == 200 for r, _ in await burst(http, 30))


async def test_the_heaviest_tenant_gets_429_a_light_one_is_served(auth_client) -> None:
    """With fair share on and two tenants active, past the budget the flooding tenant's next request is 429 (its
    excess is shed) while the light tenant's is served (only the load up to its own level is ahead of it)."""
    engine = BatchedEngine()
    client, headers = await auth_client(engine, {"heavy": UNLIMITED, "light": UNLIMITED}, fairness="on",
                                        scheduling_policy="priority", max_num_seqs=64, slo_tpot_s=TPOT_BUDGET_S,
                                        metrics_public=True, **ADMIT_ALL)
    long = {**BODY, "max_tokens": 60}
    async with client as http:
        await warm_up(http, headers["heavy"])
        # Two tenants active: one light stream, then a flood from the other.
        light_stream = asyncio.create_task(http.post(CHAT, json=long, headers=headers["light"]))
        while engine.in_flight < 1:
            await asyncio.sleep(0.005)
        flood = [asyncio.create_task(http.post(CHAT, json=long, headers=headers["heavy"])) for _ in range(12)]
        await asyncio.sleep(0.2)
        more = await http.post(CHAT, json=BODY, headers=headers["heavy"])
        error = assert_envelope(more, 429)
        assert "even share" in str(error["message"]) and int(more.headers["retry-after"]) >= 1
        light = await http.post(CHAT, json=BODY, headers=headers["light"])
        assert light.status_code == 200, light.text
        assert (await light_stream).status_code == 200
        statuses = [r.status_code for r in await asyncio.gather(*flood)]
        assert statuses.count(200) >= 6 and set(statuses) <= {200, 429}
        metrics = (await http.get("/metrics", headers=headers["heavy"])).text
        assert 'reason="tenant_share"' in metrics


async def test_the_budget_headers(client_for) -> None:
    """A request's X-SLO-TTFT-Ms tightens the server's (here none) for itself alone; a malformed one is a 400
    naming the header, on every dialect."""
    engine = BatchedEngine()
    async with client_for(engine, max_num_seqs=64) as http:
        await warm_up(http)
        for bad in ("soon", "0", "-5", "1.5", str(3_600_001)):
            assert_envelope(await http.post(CHAT, json=BODY, headers={"X-SLO-TTFT-Ms": bad}), 400, "X-SLO-TTFT-Ms")
        anthropic = await http.post("/v1/messages", json={"model": "fake-model", "max_tokens": 4, "messages": HELLO},
                                    headers={"X-SLO-TPOT-Ms": "x"})
        assert anthropic.status_code == 400 and "X-SLO-TPOT-Ms" in anthropic.json()["error"]["message"]
        held = asyncio.create_task(burst(http, 4, {**BODY, "max_tokens": 40}))
        await asyncio.sleep(0.05)
        # 1 ms to the first token while others decode (a step alone takes longer): refused at once, 503.
        refused = await http.post(CHAT, json=BODY, headers={"X-SLO-TTFT-Ms": "1"})
        assert_envelope(refused, 503)
        assert "time to the first token" in refused.json()["error"]["message"]
        assert (await http.post(CHAT, json=BODY, headers={"X-SLO-TTFT-Ms": "10000"})).status_code == 200
        assert (await http.post(CHAT, json=BODY)).status_code == 200
        assert all(r.status_code == 200 for r, _ in await held)


async def test_anthropic_overload_is_529(client_for) -> None:
    engine = BatchedEngine()
    async with client_for(engine, max_num_seqs=64, slo_tpot_s=TPOT_BUDGET_S, **ADMIT_ALL) as http:
        await warm_up(http)
        held = asyncio.create_task(burst(http, 14, {**BODY, "max_tokens": 40}))
        await asyncio.sleep(0.1)
        refused = await http.post("/v1/messages", json={"model": "fake-model", "max_tokens": 4, "messages": HELLO})
        assert refused.status_code == 529 and refused.json()["error"]["type"] == "overloaded_error"
        assert int(refused.headers["retry-after"]) >= 1
        await held
