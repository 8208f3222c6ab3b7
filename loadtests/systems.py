"""The systems a comparison starts, one at a time, from one CodeFace profile: the same engine arguments for each."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from engine import EngineConfig
from engine.config import engine_environment
from loadtests.ports import free_port
from server.cli import resolve_model
from server.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def profile_engine_config(config_file: Path, overrides: dict[str, str]) -> EngineConfig:
    """The engine options of a CodeFace profile (with overrides) as CodeFace runs them here: what every compared
    system runs. Auth is on, as codeface_server starts it, so fair share (and the engine step it bounds where the
    profile leaves max_num_batched_tokens unset) follows the profile's scheduling_policy as it does in CodeFace."""
    settings = load_settings(config_file, **{**overrides, "auth_enabled": "true"})
    return settings.engine_config(resolve_model(settings))


def vllm_serve_args(config: EngineConfig) -> list[str]:
    """`vllm serve` flags for the same engine options CodeFace passes to AsyncEngineArgs."""
    args: list[str] = []
    for name, value in config.engine_kwargs().items():
        if name == "disable_log_stats":
            continue  # vllm serve keeps its own default, as its users run it
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


@dataclass
class ServerProcess:
    name: str
    command: list[str]
    health_path: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    api_key: str | None = None
    api_keys: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 600.0) -> float:
        """Start and wait until the health route answers 200; returns the seconds that took."""
        started = time.perf_counter()
        # A session of its own, so that stop() ends the engine core processes too. The child keeps the log open.
        with open(self.log_path or os.devnull, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env or None, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.base_url + self.health_path, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.name} was not ready in {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def vllm_server(config: EngineConfig, log_dir: Path) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *vllm_serve_args(config),
               "--host", "127.0.0.1", "--port", str(port)]
    return ServerProcess("vllm", command, "/health", port, engine_environment(config), log_dir / "vllm.log")


# Limits far above what the benchmark sends: they are checked on every request, and never refuse one.
BENCH_LIMITS = {"requests_per_minute": 10 ** 7, "tokens_per_minute": 10 ** 10, "max_concurrent_streams": 10 ** 5}


async def codeface_server(config_file: Path, overrides: dict[str, str], log_dir: Path, run_id: str, *,
                          keys: int = 1) -> ServerProcess:
    """CodeFace as a shared deployment runs it: auth on (API keys: `keys` tenants, each a user of its own), rate
    limits checked, metrics on, a fresh database."""
    import asyncio

    from server import admin
    from storage import upgrade_database

    database_url = f"sqlite+aiosqlite:///{log_dir / f'codeface-{run_id}.db'}"
    # The users' own budgets (over all their keys) as high as the keys': limits are checked, never reached.
    overrides = {**{f"user_{name}": str(value) for name, value in BENCH_LIMITS.items()}, **overrides}
    settings = load_settings(config_file, **{**overrides, "database_url": database_url, "auth_enabled": "true"})
    await asyncio.to_thread(upgrade_database, database_url)
    api_keys = []
    for tenant in range(keys):
        username = "bench" if tenant == 0 else f"bench-{tenant}"
        await admin.create_user(settings, username, "bench-password", False)
        api_keys.append(await admin.create_key(settings, username, username, None, BENCH_LIMITS))
    port = free_port()
    sets = [item for key, value in overrides.items() for item in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "server", "serve", "--config", str(config_file), "--port", str(port), *sets,
               "--set", "auth_enabled=true"]
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": secrets.token_urlsafe(32)}
    return ServerProcess("codeface", command, "/readyz", port, env, log_dir / f"codeface-{run_id}.log",
                         api_key=api_keys[0], api_keys=api_keys)
