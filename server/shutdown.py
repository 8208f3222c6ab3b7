"""How long a replica may take to stop after SIGTERM in the worst case: what its supervisor's grace period
(Kubernetes terminationGracePeriodSeconds, compose stop_grace_period, docker stop -t) must cover, on top of preStop."""

from __future__ import annotations

from engine.frontends import ENGINE_STOP_TIMEOUT_S
from server.api_processes import STOP_MARGIN_S
from server.lifecycle import INTERRUPT_GRACE_S
from server.serve import CLOSE_CONNECTIONS_S
from server.settings import Settings

# The drain's last wait for final writes when its deadline has passed (server.lifecycle: max(1.0, ...)).
LAST_WRITES_MIN_S = 1.0


def worst_shutdown_s(settings: Settings) -> float:
    """One process: the drain (deadline, interrupted streams' grace, final writes), uvicorn closing connections,
    the lifespan's wait for final writes (drain_timeout_s again), then the engine's stop. Several API processes:
    the launcher gives them drain_timeout_s + STOP_MARGIN_S (then kills them), then stops the engine core."""
    if settings.api_processes > 1:
        return settings.drain_timeout_s + STOP_MARGIN_S + ENGINE_STOP_TIMEOUT_S
    drain = settings.drain_timeout_s + INTERRUPT_GRACE_S + LAST_WRITES_MIN_S
    return drain + CLOSE_CONNECTIONS_S + settings.drain_timeout_s + ENGINE_STOP_TIMEOUT_S
