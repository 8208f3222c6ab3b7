"""Pure ASGI middleware: a request's own latency budgets, from the X-SLO-TTFT-Ms and X-SLO-TPOT-Ms headers (llm-d's
names for the same promise, so a gateway that routes by them and this server read one header), handed to SLO-aware
admission (server.generation.slo) for the request's duration. A malformed value is a 400 naming the header."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response
from server.generation.slo import Budgets, request_budgets

TTFT_HEADER = "X-SLO-TTFT-Ms"
TPOT_HEADER = "X-SLO-TPOT-Ms"
_TTFT = TTFT_HEADER.lower().encode()
_TPOT = TPOT_HEADER.lower().encode()
BAD_REQUEST = 400
# An hour: a budget past it is no budget.
MAX_BUDGET_MS = 3_600_000


class BudgetHeaderError(ValueError):
    def __init__(self, header: str) -> None:
        super().__init__(f"{header} must be a whole number of milliseconds between 1 and {MAX_BUDGET_MS}")
        self.header = header


def milliseconds(header: str, raw: bytes | None) -> float | None:
    """The header's budget in seconds (None when absent); raises BudgetHeaderError."""
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_BUDGET_MS:
        raise BudgetHeaderError(header)
    return int(text) / 1000


def budgets_of(headers: list[tuple[bytes, bytes]]) -> Budgets | None:
    ttft = next((value for name, value in headers if name == _TTFT), None)
    tpot = next((value for name, value in headers if name == _TPOT), None)
    if ttft is None and tpot is None:
        return None
    return Budgets(milliseconds(TTFT_HEADER, ttft), milliseconds(TPOT_HEADER, tpot))


class SloHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            budgets = budgets_of(scope["headers"])
        except BudgetHeaderError as exc:
            response = error_response(BAD_REQUEST, str(exc), path=scope["path"], param=exc.header)
            await response(scope, receive, send)
            return
        if budgets is None:
            await self.app(scope, receive, send)
            return
        token = request_budgets.set(budgets)
        try:
            await self.app(scope, receive, send)
        finally:
            request_budgets.reset(token)
