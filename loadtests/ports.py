"""Ports for the listeners that tests and comparisons start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Listener ports are drawn from here up to the ephemeral range (above the well-known and most services' ports).
LISTENER_PORTS_FROM = 20000
# Handed out by this process: a port given to a server that has not bound it yet must not be given again.
_HANDED_OUT: set[int] = set()


def ephemeral_ports() -> range:
    """The ports the kernel hands out as the local end of outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A free port for a listener, below the ephemeral range: a server stopped and started again on a port in that
    range can find it taken meanwhile by an outgoing connection's local end (its own clients reconnecting even
    connect to themselves there), and then it cannot listen again, or a client talks to the wrong process."""
    below = ephemeral_ports().start
    for _ in range(1000):
        port = random.randrange(LISTENER_PORTS_FROM, below)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {LISTENER_PORTS_FROM}-{below - 1}")
