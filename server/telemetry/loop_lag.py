"""Samples the event loop's lag (how late a timer fires) into codeface_event_loop_lag_seconds: the one number that
says whether the server stays responsive (idle listeners, a login flood, a slow dependency must not move it)."""

from __future__ import annotations

import asyncio

from server.telemetry.metrics import event_loop_lag

SAMPLE_EVERY_S = 0.5


async def watch_loop_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(SAMPLE_EVERY_S)
        event_loop_lag.observe(max(0.0, loop.time() - began - SAMPLE_EVERY_S))
