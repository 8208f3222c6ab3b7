"""Prompts of an exact token length, random but seeded, so that no two requests share a prefix."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

DEFAULT_TOKENIZER = Path.home() / ".cache" / "codeface" / "models" / "SmolLM2-135M-Instruct"


def random_prompts(tokenizer_path: str | Path, count: int, input_len: int, seed: int = 0) -> list[str]:
    """`count` texts of `input_len` tokens each (before the chat template), as vllm bench's random dataset."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_path))
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(tokenizer.vocab_size) if i not in special]
    prompts = []
    for _ in range(count):
        ids = [rng.choice(vocab) for _ in range(input_len)]
        # Decoding and re-encoding can merge or split tokens: trim or pad until the length is exact.
        for _ in range(10):
            ids = tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)[:input_len]
            if len(ids) == input_len:
                break
            ids += [rng.choice(vocab) for _ in range(input_len - len(ids))]
        prompts.append(tokenizer.decode(ids))
    return prompts


def chat_payload(model: str | None, prompt: str, output_len: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": output_len,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    if model:
        payload["model"] = model
    return payload
