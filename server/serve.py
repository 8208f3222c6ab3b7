"""Runs the app on uvicorn with CodeFace's lifecycle: the first SIGTERM (or Ctrl+C) drains instead of stopping at
once, a second one stops now; the process's exit code says whether the engine died."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from server.os_limits import check_listen_backlog, raise_open_file_limit
from server.state import AppServices

# After the drain, how long uvicorn waits for connections to close before it closes them.
CLOSE_CONNECTIONS_S = 5
# uvicorn's default listen backlog.
BACKLOG = 2048


class DrainingServer(uvicorn.Server):  # type: ignore[misc]
    def __init__(self, config: uvicorn.Config, services: AppServices) -> None:
        super().__init__(config)
        self.services = services
        services.lifecycle.request_exit = self.exit_now

    def exit_now(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.services.lifecycle.begin_drain(self.services):
            return
        super().handle_exit(sig, frame)


def serve(app: Starlette, host: str, port: int, **config: Any) -> int:
    """Serve until drained or stopped; returns the exit code (non-zero when the engine died)."""
    services: AppServices = app.state.services
    raise_open_file_limit(services.settings.max_sse_listeners)
    check_listen_backlog(config.get("backlog", BACKLOG))
    # log_config=None: uvicorn's records go through our handler; our middleware writes the access lines.
    uv_config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None,
                               access_log=False, timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
                               backlog=config.pop("backlog", BACKLOG), **config)
    DrainingServer(uv_config, services).run()
    return services.lifecycle.exit_code
