"""What the process needs from the OS for many open streams, checked at start: every open connection holds a file
descriptor (the soft open-file limit is raised to the hard one, with a warning if that is still short), and the
kernel caps the listen backlog at net.core.somaxconn (a burst of connections past it is dropped)."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

logger = logging.getLogger("codeface")

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# Descriptors the process needs besides its connections: the engine's sockets, the database pool, logs, models.
RESERVED_FDS = 1024


def raise_open_file_limit(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn if it stays below what `connections` need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_FDS
    target = max(soft, wanted) if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning("the open-file limit is %d, below the %d that %d event streams and connections need: "
                       "raise it (ulimit -n, systemd LimitNOFILE=, Docker --ulimit nofile=) or lower "
                       "MAX_SSE_LISTENERS", soft, wanted, connections)
    return soft


def check_listen_backlog(backlog: int) -> int | None:
    """Warn when the kernel truncates uvicorn's listen backlog (net.core.somaxconn below it)."""
    try:
        somaxconn = int(SOMAXCONN.read_text().strip())
    except (OSError, ValueError):
        return None
    if somaxconn < backlog:
        logger.warning("net.core.somaxconn is %d, below the listen backlog of %d: a burst of new connections past "
                       "%d is dropped by the kernel (sysctl -w net.core.somaxconn=%d)", somaxconn, backlog,
                       somaxconn, backlog)
    return somaxconn
