"""Runs the app on uvicorn with CodeFace's lifecycle: the first SIGTERM (or Ctrl+C) drains instead of stopping at
once, a second one stops now; the process's exit code says whether the engine died."""

from __future__ import annotations

import signal
import socket
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
    def __init__(self, config: uvicorn.Config, services: AppServices, **server_options: Any) -> None:
        super().__init__(config, **server_options)
        self.services = services
        services.lifecycle.request_exit = self.exit_now

    def exit_now(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and self.services.lifecycle.begin_drain(self.services):
            return
        super().handle_exit(sig, frame)


def uvicorn_config(app: Starlette) -> uvicorn.Config:
    services: AppServices = app.state.services
    settings = services.settings
    raise_open_file_limit(settings.max_sse_listeners)
    check_listen_backlog(BACKLOG)
    # log_config=None: uvicorn's records go through our handler; our middleware writes the access lines.
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                          log_config=None, access_log=False, timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
                          timeout_keep_alive=settings.http_keep_alive_s,
                          backlog=BACKLOG, proxy_headers=bool(settings.forwarded_allow_ips),
                          forwarded_allow_ips=settings.forwarded_allow_ips or None)


def serve(app: Starlette) -> int:
    """Serve until drained or stopped; returns the exit code (non-zero when the engine died)."""
    services: AppServices = app.state.services
    DrainingServer(uvicorn_config(app), services).run()
    return services.lifecycle.exit_code


def serve_on(app: Starlette, sock: socket.socket, peer_loads: Any) -> int:
    """One of several API processes on a shared listening socket: vLLM's least-loaded accept (each process publishes
    its open connections in `peer_loads`), with the same drain on SIGTERM."""
    from vllm.entrypoints.launchers.launcher import NoSignalServer

    class DrainingWorker(DrainingServer, NoSignalServer):  # type: ignore[misc]
        # vLLM's server installs no signal handlers (its launcher does); this one drains on SIGTERM like serve().
        capture_signals = uvicorn.Server.capture_signals

    services: AppServices = app.state.services
    DrainingWorker(uvicorn_config(app), services, peer_loads=peer_loads).run(sockets=[sock])
    return services.lifecycle.exit_code
