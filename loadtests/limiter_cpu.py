"""The limiter's own cost per generation: CPU of this process and of Redis for one generation's limits (the request
counted, its tokens checked, reserved with a slot and settled) in two budgets, a key's and its user's (as every
authenticated request has), every limit set, at a given concurrency. Run it from each tree to compare, in turns:
PYTHONPATH=TREE python loadtests/limiter_cpu.py."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from server.security.ratelimit import Budget, Quota, RateLimits

HUGE = 10 ** 9


async def redis_cpu_s(client: Any) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def one_generation(limits: RateLimits, budgets: list[Budget]) -> None:
    """What admission asks of the limiter for one generation: the request counted, its tokens checked before the
    prompt is rendered, then reserved with a slot, and settled when it ends."""
    await limits.hit_requests(budgets)
    await limits.check_tokens(budgets, 100)
    reservation = await limits.reserve_all(budgets, 300)
    await reservation.settle(200)


async def run(url: str, generations: int, concurrency: int) -> dict[str, float]:
    import coredis

    limits = RateLimits(url, fail_open=False, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await limits.storage.warm_up()
    quota = Quota(HUGE, HUGE, HUGE)
    users = [Budget(f"user:{index}", quota) for index in range(concurrency)]
    budget_sets = [[Budget(f"key:{index}", quota), users[index]] for index in range(concurrency)]
    counter: Any = coredis.Redis.from_url(url.removeprefix("async+"))
    for budgets in budget_sets:  # warm: scripts loaded, connections open
        await one_generation(limits, budgets)
    each = generations // concurrency

    async def worker(budgets: list[Budget]) -> None:
        for _ in range(each):
            await one_generation(limits, budgets)

    redis_before = await redis_cpu_s(counter)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(budgets) for budgets in budget_sets))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    redis = await redis_cpu_s(counter) - redis_before
    done = each * concurrency
    return {"generations": done, "cpu_ms_per_generation": cpu * 1000 / done,
            "redis_cpu_ms_per_generation": redis * 1000 / done, "generations_per_s": done / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="async+redis://127.0.0.1:6379")
    parser.add_argument("--generations", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    result = asyncio.run(run(args.redis, args.generations, args.concurrency))
    print(args.label, " ".join(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}"
                               for name, value in result.items()))


if __name__ == "__main__":
    main()
