"""`python -m loadtests.raw_engine`: vLLM's AsyncLLM driven in-process with the same jobs: the ceiling, no HTTP."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

from loadtests.metrics import RequestResult
from loadtests.runner import run_closed_loop
from loadtests.workload import Job, SendChat
from server.cli import override


def raw_sender(llm: Any, tokenizer: Any) -> SendChat:
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    async def send(payload: dict[str, Any]) -> RequestResult:
        # The chat template is applied before the clock starts: this measures the engine alone.
        text = tokenizer.apply_chat_template(payload["messages"], tokenize=False, add_generation_prompt=True)
        prompt = {"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}
        params = SamplingParams(max_tokens=payload["max_tokens"], temperature=payload.get("temperature", 0.0),
                                ignore_eos=payload.get("ignore_eos", False), output_kind=RequestOutputKind.DELTA)
        result = RequestResult(ok=False, prompt_tokens=len(prompt["prompt_token_ids"]))
        parts: list[str] = []
        start = last = time.perf_counter()
        async for output in llm.generate(prompt, params, uuid.uuid4().hex):
            choice = output.outputs[0]
            if choice.token_ids:
                now = time.perf_counter()
                if result.output_tokens == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                result.output_tokens += len(choice.token_ids)
                parts.append(choice.text)
        result.latency = time.perf_counter() - start
        result.text = "".join(parts)
        result.ok = result.output_tokens > 0
        return result

    return send


async def run(config_file: Path, overrides: dict[str, str], plan: dict[str, Any]) -> dict[str, Any]:
    from vllm.v1.engine.async_llm import AsyncLLM

    from engine.config import build_engine_args
    from loadtests.systems import profile_engine_config

    config = profile_engine_config(config_file, overrides)
    started = time.perf_counter()
    llm = AsyncLLM.from_engine_args(build_engine_args(config))
    start_s = time.perf_counter() - started
    tokenizer = llm.get_tokenizer()
    send = raw_sender(llm, tokenizer)
    try:
        warmup = [Job(**job) for job in plan["warmup"]]
        await run_closed_loop(send, warmup, max(1, len(warmup)))
        levels = []
        for level in plan["levels"]:
            jobs = [Job(**job) for job in level["jobs"]]
            results, duration = await run_closed_loop(send, jobs, level["concurrency"],
                                                      max_duration_s=plan["max_duration_s"])
            levels.append({"concurrency": level["concurrency"], "duration_s": duration,
                           "results": [dataclasses.asdict(r) for r in results]})
    finally:
        llm.shutdown()
    return {"start_s": start_s, "levels": levels}


async def run_capacity(config_file: Path, overrides: dict[str, str], plan_data: dict[str, Any]) -> dict[str, Any]:
    """`python -m loadtests capacity`'s search (loadtests.capacity) on the engine driven in-process."""
    from vllm.v1.engine.async_llm import AsyncLLM

    from engine.config import build_engine_args
    from loadtests.capacity_run import (
        SystemCapacity,
        capacity_json,
        jobs_maker,
        open_loop_measure,
        plan_from_json,
        search_all,
    )
    from loadtests.systems import profile_engine_config

    plan = plan_from_json(plan_data)
    config = profile_engine_config(config_file, overrides)
    started = time.perf_counter()
    llm = AsyncLLM.from_engine_args(build_engine_args(config))
    start_s = time.perf_counter() - started
    send = raw_sender(llm, llm.get_tokenizer())
    jobs_for = jobs_maker(plan.workload)
    try:
        await run_closed_loop(send, jobs_for(4, plan.seed + 999), 2)
        knees, trials = await search_all(open_loop_measure(send, plan, jobs_for), plan)
    finally:
        llm.shutdown()
    return capacity_json(SystemCapacity(start_s, knees, trials))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.raw_engine")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], type=override)
    plans = parser.add_mutually_exclusive_group(required=True)
    plans.add_argument("--plan", type=Path, help="JSON: warmup jobs, levels, max_duration_s")
    plans.add_argument("--capacity", type=Path, help="JSON: a capacity search's plan (loadtests.capacity_run)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    overrides = dict(args.set)
    if args.capacity is not None:
        report = asyncio.run(run_capacity(args.config, overrides, json.loads(args.capacity.read_text())))
    else:
        report = asyncio.run(run(args.config, overrides, json.loads(args.plan.read_text())))
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
