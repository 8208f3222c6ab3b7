"""Several API processes over one engine core, through vLLM's own machinery (what `vllm serve --api-server-count N`
runs): the engine core starts once, N spawned processes each connect to it as one of N clients and serve one
shared listening socket, the least loaded process accepting each new connection."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from engine.config import EngineConfig, build_engine_args

logger = logging.getLogger(__name__)

# vLLM's key for the shared array of open connections per API process (its NoSignalServer balances on it).
PEER_LOADS_KEY = "api_server_loads"
# The engine core and its workers exit within a few seconds of SIGTERM (its workers' own teardown takes ~5 s).
ENGINE_STOP_TIMEOUT_S = 15.0


@dataclass
class EngineClientSlot:
    """What one API process needs to join the engine core: vLLM's client addresses, its index among `count`, and
    (the array where the API processes publish their open connections, this process's index in it) for vLLM's
    least-loaded accept."""

    index: int
    count: int
    addresses: dict[str, Any] = field(default_factory=dict)
    peer_loads: Any = None

    @classmethod
    def from_client_config(cls, client_config: dict[str, Any]) -> EngineClientSlot:
        config = dict(client_config)
        index, count = config.pop("client_index"), config.pop("client_count")
        loads = config.pop(PEER_LOADS_KEY, None)
        return cls(index=index, count=count, peer_loads=None if loads is None else (loads, index), addresses=config)


# (listening socket, the payload given to run_frontends, this process's slot) -> exit code
FrontendMain = Callable[[socket.socket, Any, EngineClientSlot], int]


@dataclass(frozen=True)
class _Entry:
    """APIServerProcessManager calls target(listen_address, sock, args, client_config) in each spawned process;
    this picklable callable turns that into the frontend's own signature."""

    target: FrontendMain

    def __call__(self, _listen_address: str, sock: socket.socket, payload: Any, client_config: dict[str, Any]) -> None:
        from vllm.utils.system_utils import set_process_title

        set_process_title("APIServer", str(client_config["client_index"]))  # VLLM::APIServer_0, as vllm serve's
        sys.exit(self.target(sock, payload, EngineClientSlot.from_client_config(client_config)))


def run_frontends(config: EngineConfig, count: int, sock: socket.socket, listen_address: str, target: FrontendMain,
                  payload: Any, stop_timeout_s: float) -> int:
    """Start the engine core once and `count` API processes running `target(sock, payload, slot)`; return when they
    end. SIGTERM or SIGINT here is passed on to every API process (each drains), which get `stop_timeout_s` to exit
    before they are killed; then the engine core stops. Returns 0, or 1 if a process or the engine core died."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus
    from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

    setup_multiprocess_prometheus()  # before the spawn: each API process writes its metrics to the shared folder
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            logger.info("signal %d: draining %d API process(es)", signum, count)
            raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    engine_args = build_engine_args(config)
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1  # the launcher, not one of the API processes
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    listeners = bind_engine_zmq_listeners(vllm_config, count)
    exit_code = 0
    manager: Any = None
    engines: Any = None
    coordinator: Any = None
    try:
        with launch_core_engines(vllm_config, Executor.get_class(vllm_config), not engine_args.disable_log_stats,
                                 listeners.addresses) as launch:
            engines, coordinator = launch.engine_manager, launch.coordinator
            manager = APIServerProcessManager(
                listen_address=listen_address, sock=sock, args=payload, num_servers=count,
                input_listeners=listeners.inputs, output_listeners=listeners.outputs, target_server_fn=_Entry(target),
                stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
                tensor_queue=launch.tensor_queue)
            launch.watched_frontend_processes = manager.processes
        wait_for_completion_or_failure(api_server_manager=manager, engine_manager=engines, coordinator=coordinator)
    except SystemExit:
        pass
    except Exception as exc:
        logger.error("stopping every API process: %s", exc)
        exit_code = 1
    finally:
        if manager is not None:
            manager.shutdown(timeout=stop_timeout_s)  # SIGTERM to each: they drain, then exit
            if any(process.exitcode not in (0, None) for process in manager.processes):
                exit_code = 1
        if engines is not None:
            engines.shutdown(timeout=ENGINE_STOP_TIMEOUT_S)
        if coordinator is not None:
            coordinator.shutdown()
    return exit_code
