"""`python -m loadtests run|compare|capacity|...`: load-test any OpenAI-compatible chat server, compare CodeFace
with vllm serve and the raw engine, or find each one's capacity (the knee). Bounded by request count and duration;
targets loopback or the URL given."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

from loadtests.metrics import SLO, RequestResult, Summary, summarize
from loadtests.report import COLUMNS, markdown_table, plot, row_cells, summary_rows, text_table
from loadtests.runner import http_client, http_sender, run_closed_loop, run_open_loop
from loadtests.scrape import gained, scrape
from loadtests.workload import DEFAULT_TOKENIZER, Workload, build_jobs
from server.cli import override

RESULTS_DIR = Path("loadtests/results")


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=[kind.value for kind in Workload], default=Workload.FIXED.value)
    parser.add_argument("--input-len", type=int, default=256, help="tokens per user message (fixed, multiturn)")
    parser.add_argument("--output-len", type=int, default=128, help="tokens per reply (fixed, multiturn)")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation (multiturn)")
    parser.add_argument("--prefix-len", type=int, default=1024,
                        help="tokens of the system prompt every user shares (shared-prefix)")
    parser.add_argument("--cancel-share", type=float, default=0.0,
                        help="share of users who close the stream mid-reply (0 to 1)")
    parser.add_argument("--cancel-after", type=int, default=16, help="content chunks those users read first")
    parser.add_argument("--num-prompts", type=int, default=0,
                        help="jobs per level (default: max(8, 2 x concurrency), or 4 x rate for open loop)")
    parser.add_argument("--warmup", type=int, default=2, help="jobs sent before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-duration", type=float, default=600.0, help="seconds per level at most")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: loadtests/results/...)")
    parser.add_argument("--extra-body", type=json.loads, default=None, metavar="JSON",
                        help='fields added to every request, e.g. \'{"response_format": {"type": "json_object"}}\'')


def out_dir(args: argparse.Namespace, kind: str) -> Path:
    folder = args.out or RESULTS_DIR / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def jobs_for(args: argparse.Namespace, count: int, seed: int) -> list:
    return build_jobs(args.workload, count, input_len=args.input_len, output_len=args.output_len, turns=args.turns,
                      seed=seed, tokenizer=args.tokenizer, model=getattr(args, "model", None), extra=args.extra_body,
                      prefix_len=args.prefix_len, cancel_share=args.cancel_share, cancel_after=args.cancel_after)


Level = tuple[Summary, list[RequestResult], dict[str, float]]


async def run(args: argparse.Namespace) -> dict[int, Level]:
    """Each level's summary, its requests, and (with --scrape-metrics) what the server's own metrics say of it."""
    completions = args.api == "completions"
    url = args.base_url.rstrip("/") + ("/v1/completions" if completions else "/v1/chat/completions")
    slo = SLO.parse(args.slo)
    levels: dict[int, Level] = {}
    points = [float(r) for r in args.rate.split(",")] if args.rate else [int(c) for c in args.concurrency.split(",")]
    async with http_client(int(max(points)) if not args.rate else 256, args.api_key) as http:
        send = http_sender(http, url, completions=completions)
        await run_closed_loop(send, jobs_for(args, args.warmup, seed=args.seed + 999), max(1, args.warmup))
        for index, point in enumerate(points):
            count = args.num_prompts or (int(4 * point) if args.rate else max(8, 2 * int(point)))
            # A fresh seed per level: no level profits from another's prompts in the prefix cache.
            jobs = jobs_for(args, count, seed=args.seed + index)
            before = await scrape(http, args.base_url) if args.scrape_metrics else None
            if args.rate:
                results, duration = await run_open_loop(send, jobs, point, burstiness=args.burstiness,
                                                        seed=args.seed, max_duration_s=args.max_duration,
                                                        label=f"rate={point}")
            else:
                results, duration = await run_closed_loop(send, jobs, int(point), max_duration_s=args.max_duration,
                                                          label=f"c={point}", ramp_up_s=args.ramp_up)
            server_view = gained(before, await scrape(http, args.base_url)) if args.scrape_metrics else {}
            summary = summarize(results, duration, slo)
            levels[int(point) if not args.rate else index] = (summary, results, server_view)
            print(text_table(COLUMNS, [row_cells(int(point), summary)]).splitlines()[-1], file=sys.stderr)
    return levels


def turn_table(results: list[RequestResult]) -> str:
    """Median TTFT and prompt length per turn: how a conversation's growing history costs (prefix caching)."""
    import statistics

    rows = []
    for turn in sorted({r.turn for r in results if r.ok}):
        at_turn = [r for r in results if r.ok and r.turn == turn]
        rows.append([str(turn + 1), str(len(at_turn)), f"{statistics.median(r.ttft for r in at_turn) * 1000:.1f}",
                     f"{statistics.median(r.prompt_tokens for r in at_turn):.0f}"])
    return text_table(["turn", "requests", "med TTFT ms", "med prompt tokens"], rows)


def server_metrics_section(views: dict[str, dict[str, float]]) -> list[str]:
    """The server's own metrics per level: counters' gains over it, gauges at its end."""
    lines = []
    for level, view in views.items():
        lines += ["", f"## Server metrics, level {level}", "", "| metric | value |", "|---|---|"]
        lines += [f"| `{name}` | {value:g} |" for name, value in view.items()]
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    folder = out_dir(args, "run")
    levels = asyncio.run(run(args))
    summaries = {c: s for c, (s, _, _) in levels.items()}
    table = text_table(COLUMNS, summary_rows(summaries))
    print(table)
    if args.workload == "multiturn":
        for point, (_, results, _) in levels.items():
            print(f"\nlevel {point}: by turn")
            print(turn_table(results))
    context = {"url": args.base_url, "workload": args.workload, "input_len": args.input_len,
               "output_len": args.output_len, "rate": args.rate, "burstiness": args.burstiness,
               "concurrency": args.concurrency, "slo": args.slo, "prefix_len": args.prefix_len,
               "cancel_share": args.cancel_share, "cancel_after": args.cancel_after, "ramp_up_s": args.ramp_up,
               "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node()}
    server_views = {str(c): view for c, (_, _, view) in levels.items() if view}
    (folder / "results.json").write_text(json.dumps(
        {"context": context, "levels": {str(c): dataclasses.asdict(s) for c, s in summaries.items()},
         "server_metrics": server_views}, indent=2))
    images = plot(folder, {"server": summaries}, {"server": {c: r for c, (_, r, _) in levels.items()}})
    (folder / "report.md").write_text("\n".join(
        ["# Load test", "", "```", json.dumps(context, indent=2), "```", "", markdown_table(COLUMNS,
         summary_rows(summaries)), ""] + [f"![{p.stem}]({p.name})" for p in images]
        + server_metrics_section(server_views)) + "\n")
    print(f"results, report and plots in {folder}")
    return 0 if all(s.failed == 0 for s in summaries.values()) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from loadtests.compare import SYSTEMS, Plan, compare, write_results
    from loadtests.systems import profile_engine_config

    folder = out_dir(args, "compare")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    overrides = dict(args.set)
    levels = {c: jobs_for(args, args.num_prompts or max(8, 2 * c), seed=args.seed + i)
              for i, c in enumerate(concurrencies)}
    plan = Plan(args.config, overrides, jobs_for(args, args.warmup, seed=args.seed + 999), levels,
                args.max_duration, folder)
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}: choose from {SYSTEMS}")
    runs = asyncio.run(compare(plan, systems, args.repeats))
    step = profile_engine_config(args.config, overrides).engine_kwargs().get("max_num_batched_tokens")
    context = {"config": str(args.config), "overrides": overrides, "workload": args.workload,
               "max_num_batched_tokens (every system)": step or "vLLM's default",
               "input_len": args.input_len, "output_len": args.output_len, "concurrency": concurrencies,
               "jobs_per_level": {c: len(j) for c, j in levels.items()}, "repeats": args.repeats,
               "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "command": " ".join(sys.argv)}
    print(write_results(runs, concurrencies, plan, context))
    print(f"results, report and plots in {folder}")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from loadtests.capacity import Objective
    from loadtests.capacity_run import SYSTEMS, CapacityPlan, measure_system, write_report

    folder = out_dir(args, "capacity")
    systems = args.systems.split(",")
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}: choose from {list(SYSTEMS)}")
    slo = SLO.parse(args.slo)
    if slo is None or slo.ttft_ms is None or slo.tpot_ms is None:
        raise SystemExit("--slo needs both ttft:MS and tpot:MS")
    workload = {"kind": args.workload, "input_len": args.input_len, "output_len": args.output_len,
                "turns": args.turns, "tokenizer": str(args.tokenizer), "extra": args.extra_body}
    plan = CapacityPlan(args.config, dict(args.set), Objective(slo.ttft_ms, slo.tpot_ms), args.repeats,
                        args.start_rate, args.max_rate, args.precision,
                        tuple(float(m) for m in args.beyond.split(",") if m), args.trial_duration,
                        args.min_requests, args.seed, workload, folder)
    results = {}
    for system in systems:
        print(f"{system}: searching", file=sys.stderr, flush=True)
        results[system] = asyncio.run(measure_system(system, plan))
    context = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "config": str(args.config), "overrides": dict(args.set), "slo_ms": {"ttft": slo.ttft_ms,
               "tpot": slo.tpot_ms}, "repeats": args.repeats, "trial_duration_s": args.trial_duration,
               "workload": workload}
    print(write_report(results, plan, context))
    print(f"results, report and plot in {folder}")
    return 0


def cmd_conversations(args: argparse.Namespace) -> int:
    from loadtests.conversations import run as run_conversations

    report = asyncio.run(run_conversations(args.base_url, args.api_key, args.conversations, args.turns,
                                           args.max_tokens))
    print(json.dumps(report, indent=2))
    return 0 if report["conversations_with_problems"] == 0 else 1


def cmd_listeners(args: argparse.Namespace) -> int:
    from loadtests.listeners import measure, report

    folder = out_dir(args, "listeners")
    count = args.num_prompts or 2 * args.concurrency
    # A full round at the load's concurrency: the first load after a smaller warm-up runs slow on the CPU engine.
    warmup = jobs_for(args, max(args.warmup, args.concurrency), seed=args.seed + 999)
    repeats = asyncio.run(measure(args.config, dict(args.set), folder, args.listeners, args.repeats, args.window,
                                  lambda load: jobs_for(args, count, seed=args.seed + load), warmup,
                                  args.concurrency))
    context = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "cpu": platform.processor() or platform.machine()}
    text = report(repeats, args.listeners, context)
    (folder / "report.md").write_text(text + "\n")
    print(text)
    return 0


def cmd_api_processes(args: argparse.Namespace) -> int:
    from loadtests.api_processes import measure, report

    folder = out_dir(args, "api-processes")
    jobs = jobs_for(args, args.num_prompts or 2 * args.concurrency, seed=args.seed)
    warmup = jobs_for(args, args.warmup, seed=args.seed + 999)
    counts = [int(count) for count in args.api_processes.split(",")]
    runs = asyncio.run(measure(args.config, dict(args.set), folder, args.redis_url, counts, args.repeats, jobs,
                               warmup, args.concurrency))
    context = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "cpu": platform.processor() or platform.machine()}
    text = report(runs, context)
    (folder / "report.md").write_text(text + "\n")
    print(text)
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    from loadtests.tenants import SYSTEMS, Tenant, compare, report, same_engine_step

    folder = out_dir(args, "tenants")
    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}: choose from {list(SYSTEMS)}")
    heavy = Tenant("heavy", args.input_len, args.heavy_output_len, args.heavy_concurrency * 20,
                   concurrency=args.heavy_concurrency)
    light = Tenant("light", args.input_len, args.light_output_len, args.light_requests, every_s=args.light_every)
    overrides = same_engine_step(args.config, dict(args.set), systems)
    runs = asyncio.run(compare(args.config, overrides, folder, systems, args.repeats, heavy, light, args.tokenizer,
                               args.ramp))
    context = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
               "overrides": overrides}
    text = report(runs, context)
    (folder / "report.md").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    r = commands.add_parser("run", help="load one server at one or more concurrencies or request rates")
    r.add_argument("--base-url", default="http://127.0.0.1:8000")
    r.add_argument("--model", default=None, help="model name to send (default: the server's default)")
    r.add_argument("--api-key", default=None)
    r.add_argument("--concurrency", default="1,16", help="closed loop: comma-separated concurrencies")
    r.add_argument("--rate", default="", help="open loop instead: comma-separated requests/s")
    r.add_argument("--api", choices=["chat", "completions"], default="chat",
                   help="completions: /v1/completions with each job's message as the prompt")
    r.add_argument("--burstiness", type=float, default=1.0, help="open loop: 1 = Poisson, < 1 burstier")
    r.add_argument("--slo", nargs="*", default=[], help="goodput SLOs in ms, e.g. ttft:500 tpot:50")
    r.add_argument("--ramp-up", type=float, default=0.0,
                   help="closed loop: seconds over which the users arrive (default: all at once)")
    r.add_argument("--scrape-metrics", action="store_true",
                   help="read the server's /metrics before and after each level into the report")
    add_workload_args(r)
    r.set_defaults(handler=cmd_run)

    c = commands.add_parser("compare", help="vllm serve vs CodeFace vs the raw engine, one after the other")
    c.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"), help="CodeFace profile: engine arguments")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="profile overrides")
    c.add_argument("--systems", default="vllm,codeface,engine")
    c.add_argument("--concurrency", default="1,16,64")
    c.add_argument("--repeats", type=int, default=3)
    add_workload_args(c)
    c.set_defaults(handler=cmd_compare)
    k = commands.add_parser("capacity", help="each system's knee: the highest Poisson rate whose p90 (and p99) "
                            "TTFT and TPOT meet an SLO, goodput against offered rate")
    k.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"), help="CodeFace profile: engine arguments")
    k.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="profile overrides, the same for every system")
    k.add_argument("--systems", default="codeface,vllm,engine")
    k.add_argument("--slo", nargs="+", default=["ttft:3000", "tpot:150"], help="ttft:MS tpot:MS")
    k.add_argument("--repeats", type=int, default=2, help="trials per rate; a rate passes if every one does")
    k.add_argument("--start-rate", type=float, default=0.25, help="requests/s of the first trial")
    k.add_argument("--max-rate", type=float, default=64.0)
    k.add_argument("--precision", type=float, default=0.1, help="stop when failing / passing rate - 1 is under it")
    k.add_argument("--beyond", default="0.7,1.5,2", help="multiples of the p90 knee measured as well")
    k.add_argument("--trial-duration", type=float, default=60.0, help="seconds of arrivals per trial")
    k.add_argument("--min-requests", type=int, default=20, help="requests per trial at least")
    add_workload_args(k)
    k.set_defaults(handler=cmd_capacity)
    v = commands.add_parser("conversations", help="concurrent multi-turn conversations, then audit what was stored")
    v.add_argument("--base-url", default="http://127.0.0.1:8000")
    v.add_argument("--api-key", default=None)
    v.add_argument("--conversations", type=int, default=64)
    v.add_argument("--turns", type=int, default=4)
    v.add_argument("--max-tokens", type=int, default=32)
    v.set_defaults(handler=cmd_conversations)
    n = commands.add_parser("listeners", help="N idle SSE listeners: server CPU and RSS, and a chat load beside them")
    n.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    n.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="profile overrides")
    n.add_argument("--listeners", type=int, default=10_000)
    n.add_argument("--concurrency", type=int, default=16, help="chat streams of the load beside them")
    n.add_argument("--repeats", type=int, default=3)
    n.add_argument("--window", type=float, default=30.0, help="seconds of each CPU measurement")
    add_workload_args(n)
    n.set_defaults(handler=cmd_listeners)
    a = commands.add_parser("api-processes", help="output tok/s and frontend CPU per 1,000 tokens for api_processes N")
    a.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="profile overrides, the same for every run")
    a.add_argument("--api-processes", default="1,2", help="the values to compare, comma-separated")
    a.add_argument("--concurrency", type=int, default=64)
    a.add_argument("--repeats", type=int, default=2)
    a.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="limits and reply streams (N > 1 needs it)")
    add_workload_args(a)
    a.set_defaults(handler=cmd_api_processes)
    t = commands.add_parser("tenants", help="noisy neighbour: a light tenant's TTFT beside a heavy tenant's flood")
    t.add_argument("--config", type=Path, default=Path("configs/cpu.yaml"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="engine and profile overrides, the same for every system")
    t.add_argument("--systems", default="vllm,codeface-fcfs,codeface-fair")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--input-len", type=int, default=128)
    t.add_argument("--heavy-concurrency", type=int, default=64)
    t.add_argument("--heavy-output-len", type=int, default=128)
    t.add_argument("--light-output-len", type=int, default=16)
    t.add_argument("--light-requests", type=int, default=10)
    t.add_argument("--light-every", type=float, default=3.0, help="seconds between the light tenant's requests")
    t.add_argument("--ramp", type=float, default=10.0, help="seconds of flood before the light tenant starts")
    t.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    t.add_argument("--out", type=Path, default=None)
    t.set_defaults(handler=cmd_tenants)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
