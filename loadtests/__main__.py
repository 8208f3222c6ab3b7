"""`python -m loadtests run ...`: measure an OpenAI-compatible chat server at one or more concurrencies."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from loadtests.metrics import Summary, summarize
from loadtests.runner import http_client, http_sender, run_closed_loop
from loadtests.workload import DEFAULT_TOKENIZER, chat_payload, random_prompts


def format_table(rows: list[tuple[int, Summary]]) -> str:
    header = (f"{'conc':>5} {'ok':>5} {'fail':>5} {'out tok/s':>10} {'req/s':>7} {'med TTFT ms':>12} "
              f"{'p99 TTFT ms':>12} {'med ITL ms':>11} {'med TPOT ms':>12} {'tok/req':>8}")
    lines = [header, "-" * len(header)]
    for concurrency, s in rows:
        lines.append(f"{concurrency:>5} {s.completed:>5} {s.failed:>5} {s.output_throughput:>10.1f} "
                     f"{s.request_throughput:>7.2f} {s.ttft_ms['p50']:>12.1f} {s.ttft_ms['p99']:>12.1f} "
                     f"{s.itl_ms['p50']:>11.1f} {s.tpot_ms['p50']:>12.1f} {s.mean_output_tokens:>8.1f}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[tuple[int, Summary]]:
    url = args.base_url.rstrip("/") + "/v1/chat/completions"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for index, concurrency in enumerate(concurrencies):
        count = args.num_prompts or max(8, 4 * concurrency)
        # A fresh seed per level: no level reuses another's prompts from the prefix cache.
        prompts = random_prompts(args.tokenizer, count + args.warmup, args.input_len, seed=args.seed + 1000 * index)
        payloads = [chat_payload(args.model, p, args.output_len) for p in prompts]
        async with http_client(concurrency, args.api_key) as http:
            send = http_sender(http, url)
            await run_closed_loop(send, payloads[:args.warmup], min(concurrency, args.warmup) or 1)
            results, duration = await run_closed_loop(send, payloads[args.warmup:], concurrency,
                                                      args.max_duration)
        summary = summarize(results, duration)
        rows.append((concurrency, summary))
        print(format_table([(concurrency, summary)]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests")
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="closed-loop load at one or more concurrencies")
    r.add_argument("--base-url", default="http://127.0.0.1:8000")
    r.add_argument("--model", default=None, help="the model name to send (default: the server's default)")
    r.add_argument("--api-key", default=None)
    r.add_argument("--concurrency", default="1,16", help="comma-separated list")
    r.add_argument("--num-prompts", type=int, default=0, help="per level (default: max(8, 4 x concurrency))")
    r.add_argument("--input-len", type=int, default=256)
    r.add_argument("--output-len", type=int, default=128)
    r.add_argument("--warmup", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-duration", type=float, default=600.0, help="seconds per level")
    r.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    r.add_argument("--json", type=Path, default=None, help="write the summaries here")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([{"concurrency": c, **dataclasses.asdict(s)} for c, s in rows], indent=2))
    return 0 if all(s.failed == 0 for _, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
