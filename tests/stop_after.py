"""A pytest plugin (`-p stop_after`, with STOP_AFTER=<test name>) that ends the session once that test has run, its
fixtures torn down as usual: to repeat a test under the conditions the tests before it leave (tests/repeat.sh)."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

TARGET = os.environ.get("STOP_AFTER", "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if TARGET and item.name == TARGET and report.when == "call":
        item.session.shouldstop = f"stopped after {TARGET}"
