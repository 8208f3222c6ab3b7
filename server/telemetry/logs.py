"""JSON-lines logging through the standard logging module, with request id, trace id and user id on every line."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
_configured = False
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)


class ContextFilter(logging.Filter):
    """Adds the ids of the request being served (if any) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        # The access line is written after the request's context is gone: it passes these two itself.
        if not hasattr(record, "user_id"):
            record.user_id = user_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


def current_trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def json_formatter() -> logging.Formatter:
    formatter: logging.Formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s %(user_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
    return formatter


class LogFormat(StrEnum):
    AUTO = "auto"  # text for a person at a terminal, JSON lines otherwise
    JSON = "json"
    TEXT = "text"


def text_formatter(colours: bool) -> logging.Formatter:
    """uvicorn's style (`INFO:     message`), coloured where the terminal has colours."""
    from uvicorn.logging import DefaultFormatter

    formatter: logging.Formatter = DefaultFormatter(
        "%(levelprefix)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", use_colors=colours)
    return formatter


def configure_logging(level: str = "info", *, log_format: str = LogFormat.AUTO, log_file: Path | None = None,
                      max_bytes: int = 10_485_760, backup_count: int = 5) -> None:
    """Route every logger (ours, uvicorn's, vLLM's) through one handler: stdout, or a rotating file."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backup_count)
    else:
        handler = logging.StreamHandler(sys.stdout)
    at_terminal = log_file is None and sys.stdout.isatty()
    if log_format == LogFormat.AUTO:
        log_format = LogFormat.TEXT if at_terminal else LogFormat.JSON
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if log_format == LogFormat.JSON else text_formatter(at_terminal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    global _configured
    _configured = True
    adopt_loggers("uvicorn", "uvicorn.error", "uvicorn.access", "vllm")


def adopt_loggers(*names: str) -> None:
    """Send these loggers' records to the root handler. vLLM configures its logger when first imported (at engine
    start), so the server calls this again after that."""
    if not _configured:
        return  # logging was not configured by us (a library user, a test): leave theirs alone
    for name in names:
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
