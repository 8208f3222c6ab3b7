"""Database statement latency, errors and pool use as Prometheus metrics, and a span per statement when tracing."""

from __future__ import annotations

import time
import weakref
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from server.telemetry.metrics import db_errors, db_operation, db_pool_checked_out
from server.telemetry.tracing import tracer


def operation_of(statement: str) -> str:
    """SELECT, INSERT, UPDATE, ... : a bounded label, never the statement itself."""
    word = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "OTHER"
    return word if word in {"SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK"} else "OTHER"


def instrument(engine: AsyncEngine, *, tracing: bool) -> None:
    sync_engine = engine.sync_engine
    system = sync_engine.dialect.name

    @event.listens_for(sync_engine, "before_cursor_execute")
    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        operation = operation_of(statement)
        span = None
        if tracing:
            # SQLAlchemy runs this in a greenlet that carries the request's context: the span nests under it.
            span = tracer.start_span(f"db {operation}", kind=SpanKind.CLIENT,
                                     attributes={"db.system": system, "db.operation.name": operation})
        conn.info.setdefault("codeface_timers", []).append((time.perf_counter(), operation, span))

    @event.listens_for(sync_engine, "after_cursor_execute")
    def after(conn: Any, *_: Any) -> None:
        started, operation, span = conn.info["codeface_timers"].pop()
        db_operation.labels(operation).observe(time.perf_counter() - started)
        if span is not None:
            span.end()

    @event.listens_for(sync_engine, "handle_error")
    def failed(context: Any) -> None:
        timers = context.connection.info.get("codeface_timers") if context.connection is not None else None
        if timers:
            _, operation, span = timers.pop()
            if span is not None:
                span.record_exception(context.original_exception)
                span.end()
        else:
            operation = operation_of(context.statement or "")
        db_errors.labels(operation).inc()

    _pools.add(sync_engine.pool)


# The pools' own count, read at scrape time: checkout/checkin events do not pair up when connections fail.
_pools: weakref.WeakSet[Any] = weakref.WeakSet()
db_pool_checked_out.set_function(lambda: sum(getattr(pool, "checkedout", lambda: 0)() for pool in list(_pools)))
