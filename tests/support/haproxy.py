"""HAProxy in front of test replicas, run from the shipped deploy/haproxy.cfg unchanged (its addresses come from
the environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"  # /usr/sbin is not on every user's PATH
    return found if Path(found).exists() else None


class HAProxy:
    def __init__(self, binary: str, folder: Path, port: int, upstreams: tuple[int, int]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / "haproxy.log"
        env = {**os.environ, "CODEFACE_BIND": f"127.0.0.1:{port}", "CODEFACE_A": f"127.0.0.1:{upstreams[0]}",
               "CODEFACE_B": f"127.0.0.1:{upstreams[1]}"}
        with self.log.open("wb") as log:  # -db: in the foreground, its messages to the log
            self.process = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"haproxy did not start: {self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
