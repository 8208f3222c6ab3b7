"""Pure ASGI middleware: request id, the request's server span, HTTP metrics and one JSON access line per request."""

from __future__ import annotations

import logging
import time

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.state import PRINCIPAL
from server.telemetry.logs import request_id_var
from server.telemetry.metrics import http_duration, http_in_flight, http_requests
from server.telemetry.request_ids import incoming_request_id
from server.telemetry.tracing import tracer

access_logger = logging.getLogger("codeface.access")
def route_template(scope: Scope) -> str:
    # Starlette's router leaves the matched route in the scope; unmatched paths share one label so that
    # scanners cannot explode the metrics' cardinality.
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, tracing: bool, access_log: bool = True) -> None:
        self.app = app
        self.tracing = tracing
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        request_id_header = (b"x-request-id", request_id.encode())
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), request_id_header]
            await send(message)

        http_in_flight.inc()
        span = self._start_span(scope) if self.tracing else None
        try:
            if span is None:
                await self.app(scope, receive, send_with_id)
            else:
                with trace.use_span(span, end_on_exit=False):
                    await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            http_in_flight.dec()
            http_requests.labels(route, method, str(status)).inc()
            http_duration.labels(route, method).observe(duration)
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            if self.access_log:
                self._log_access(scope, route, status, duration, span)
            request_id_var.reset(token)

    def _start_span(self, scope: Scope) -> trace.Span:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
                   if name in (b"traceparent", b"tracestate")}
        return tracer.start_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"],
                        "codeface.request_id": request_id_var.get() or ""},
        )

    def _log_access(self, scope: Scope, route: str, status: int, duration: float, span: trace.Span | None) -> None:
        state = scope.get("state") or {}
        usage = state.get("usage") or {}
        principal = state.get(PRINCIPAL)
        client = scope.get("client")
        access_logger.info("request", extra={
            "method": scope["method"],
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration * 1000, 2),
            "client": client[0] if client else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "trace_id": format(span.get_span_context().trace_id, "032x") if span is not None else None,
            "user_id": str(principal.user_id) if principal is not None else None,
            # OpenAI's `user`: the caller's own end-user id, for abuse tracing.
            "end_user": state.get("end_user"),
        })
