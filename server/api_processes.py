"""`api_processes: N`: one engine core and N CodeFace API processes over it (engine.frontends runs vLLM's
multi-API-server machinery), each with its own event loop; limits and reply streams are shared through Redis,
/metrics adds up every process (prometheus-client's multiprocess mode), and SIGTERM drains them all."""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass

from engine.frontends import EngineClientSlot, run_frontends
from server.settings import Settings

logger = logging.getLogger("codeface")

# After the drain deadline: the final writes of replies and closing connections (server.lifecycle, server.serve).
STOP_MARGIN_S = 20.0


@dataclass(frozen=True)
class ApiProcessArgs:
    """What each spawned API process gets (pickled): the settings as the launcher read them, the model, and this
    server's id (new at each start, so that nothing counted by a previous run carries over)."""

    settings: Settings
    model_path: str
    server_id: str


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before the engine starts and shared by every API process, as vllm serve binds it."""
    from vllm.entrypoints.launchers.launcher import create_server_socket

    sock: socket.socket = create_server_socket((host, port), reuse_port=True)
    return sock


def serve_api_processes(settings: Settings, model_path: str) -> int:
    """Run until SIGTERM (drain them all) or until one process or the engine core dies (exit code 1)."""
    from server.app import check_settings

    check_settings(settings)  # here, before the engine starts: the API processes would each refuse it later
    sock = listening_socket(settings.host, settings.port)
    logger.info("starting the engine core and %d API processes on http://%s:%d", settings.api_processes,
                settings.host, settings.port)
    return run_frontends(settings.engine_config(model_path), settings.api_processes, sock,
                         f"http://{settings.host}:{settings.port}", run_api_process,
                         ApiProcessArgs(settings, model_path, uuid.uuid4().hex),
                         settings.drain_timeout_s + STOP_MARGIN_S)


def run_api_process(sock: socket.socket, args: ApiProcessArgs, slot: EngineClientSlot) -> int:
    """The body of one spawned API process: logging, tracing, the app on the shared socket."""
    from engine import ChatEngine
    from server.app import create_app
    from server.lifecycle import ApiProcess
    from server.serve import serve_on
    from server.telemetry.logs import configure_logging
    from server.telemetry.tracing import setup_tracing

    settings = args.settings
    configure_logging(settings.log_level, log_format=settings.log_format, log_file=settings.log_file,
                      max_bytes=settings.log_max_bytes, backup_count=settings.log_backup_count)
    provider = setup_tracing(settings.trace_exporter, endpoint=settings.trace_endpoint,
                             sample_ratio=settings.trace_sample_ratio)
    engine = ChatEngine(settings.engine_config(args.model_path), client_slot=slot)
    app = create_app(settings, args.model_path, engine=engine, api_process=ApiProcess(args.server_id, slot.index))
    exit_code = serve_on(app, sock, slot.peer_loads)
    if provider is not None:
        provider.shutdown()
    return exit_code
