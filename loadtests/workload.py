"""Workloads: what each simulated user sends. Fixed lengths, a realistic length mix, multi-turn conversations, many
users behind one long system prompt, and a share of users who leave mid-stream."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.model_prep import DEFAULT_MODEL_NAME, default_cache_dir
from loadtests.client import CANCEL_AFTER
from loadtests.metrics import RequestResult

# The default model's folder, where `codeface prepare-model` puts it.
DEFAULT_TOKENIZER = default_cache_dir() / DEFAULT_MODEL_NAME
LENGTHS_FILE = Path(__file__).parent / "data" / "chat_lengths.json"

SendChat = Callable[[dict[str, Any]], Awaitable[RequestResult]]


@dataclass(slots=True)
class Job:
    """One simulated user's work: one request, or several turns of one conversation."""

    turns: list[str]
    output_lens: list[int]
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    system: str | None = None            # a system prompt before the first turn (shared-prefix workloads)
    cancel_after: int | None = None      # the user leaves after this many content chunks of each reply

    async def run(self, send: SendChat) -> list[RequestResult]:
        history: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        results = []
        extra = self.extra if self.cancel_after is None else {**self.extra, CANCEL_AFTER: self.cancel_after}
        for turn, (text, output_len) in enumerate(zip(self.turns, self.output_lens)):
            history.append({"role": "user", "content": text})
            result = await send(chat_payload(self.model, history, output_len, extra))
            result.turn = turn
            results.append(result)
            if not result.ok:
                break
            history.append({"role": "assistant", "content": result.text})
        return results


def chat_payload(model: str | None, messages: list[dict[str, str]], output_len: int,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # ignore_eos makes every reply exactly output_len tokens, so that servers are compared on equal work.
    payload: dict[str, Any] = {"messages": list(messages), "max_tokens": output_len, "temperature": 0.0,
                               "ignore_eos": True, **(extra or {})}
    if model:
        payload["model"] = model
    return payload


class PromptMaker:
    """Seeded random texts of an exact token length, as vllm bench's random dataset makes them."""

    def __init__(self, tokenizer_path: str | Path, seed: int = 0) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.rng = random.Random(seed)
        special = set(self.tokenizer.all_special_ids)
        self.vocab = [i for i in range(self.tokenizer.vocab_size) if i not in special]

    def text(self, num_tokens: int) -> str:
        ids = [self.rng.choice(self.vocab) for _ in range(num_tokens)]
        # Decoding and re-encoding can merge or split tokens: trim or pad until the length is exact.
        for _ in range(10):
            ids = self.tokenizer.encode(self.tokenizer.decode(ids), add_special_tokens=False)[:num_tokens]
            if len(ids) == num_tokens:
                break
            ids += [self.rng.choice(self.vocab) for _ in range(num_tokens - len(ids))]
        return self.tokenizer.decode(ids)


def sample_lengths(count: int, seed: int, path: Path = LENGTHS_FILE) -> list[tuple[int, int]]:
    """(input, output) token counts drawn from the shipped histogram, uniform within a bin."""
    data = json.loads(path.read_text())
    rng = random.Random(seed)

    def draw(spec: dict[str, list[float]]) -> int:
        edges, weights = spec["edges"], spec["weights"]
        (low, high), = rng.choices(list(itertools.pairwise(edges)), weights=weights)
        return rng.randint(int(low), int(high) - 1)

    return [(draw(data["input_tokens"]), draw(data["output_tokens"])) for _ in range(count)]


class Workload(StrEnum):
    FIXED = "fixed"                  # input_len / output_len
    MIX = "mix"                      # the shipped length histogram
    MULTITURN = "multiturn"          # `turns` turns of input_len / output_len, the history sent back every turn
    SHARED_PREFIX = "shared-prefix"  # one system prompt of prefix_len tokens for every user, then input_len


def build_jobs(kind: str, count: int, *, input_len: int, output_len: int, turns: int = 4, seed: int = 0,
               tokenizer: str | Path = DEFAULT_TOKENIZER, model: str | None = None,
               extra: dict[str, Any] | None = None, prefix_len: int = 1024, cancel_share: float = 0.0,
               cancel_after: int = 16) -> list[Job]:
    """`kind`: a Workload. `extra`: fields added to every request (a response_format, say). `cancel_share`: the
    share of jobs (chosen with the seed) whose user closes the stream after `cancel_after` content chunks."""
    maker = PromptMaker(tokenizer, seed)
    extra = extra or {}
    match Workload(kind):
        case Workload.FIXED:
            jobs = [Job([maker.text(input_len)], [output_len], model, extra) for _ in range(count)]
        case Workload.MIX:
            jobs = [Job([maker.text(i)], [o], model, extra) for i, o in sample_lengths(count, seed)]
        case Workload.MULTITURN:
            jobs = [Job([maker.text(input_len) for _ in range(turns)], [output_len] * turns, model, extra)
                    for _ in range(count)]
        case Workload.SHARED_PREFIX:
            system = maker.text(prefix_len)
            jobs = [Job([maker.text(input_len)], [output_len], model, extra, system=system) for _ in range(count)]
    if cancel_share > 0:
        for index in random.Random(seed).sample(range(count), round(cancel_share * count)):
            jobs[index].cancel_after = cancel_after
    return jobs
