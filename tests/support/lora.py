"""LoRA adapters made in the test itself (PEFT, fixed seeds, non-zero B matrices, saved in the layout vLLM loads), and
vLLM's offline LLM with the same engine options as the server's profile, run in a process of its own: the reference
an adapter's output through the server must equal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
OFFLINE_TIMEOUT_S = 300


def make_adapter(base_model: str, out: Path, *, seed: int, rank: int = 8) -> Path:
    """A rank-`rank` LoRA for the base model, from `seed`: A and B random (init_lora_weights=False: B is not the
    zero that would leave the model unchanged), scaled so that it changes greedy outputs without wrecking them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=TARGET_MODULES, lora_dropout=0.0,
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    assert any(name.endswith("lora_B.default.weight") and param.abs().sum() > 0
               for name, param in peft_model.named_parameters()), "B must not be zero: the adapter would do nothing"
    peft_model.save_pretrained(out)
    return out


OFFLINE_SCRIPT = """
import json, sys

def main():
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    job = json.loads(sys.stdin.read())
    llm = LLM(**job["engine"])
    params = SamplingParams(temperature=0, max_tokens=job["max_tokens"])
    out = {}
    for index, (name, path) in enumerate(job["adapters"].items()):
        lora = LoRARequest(name, index + 1, path) if path else None
        # One prompt at a time, as the server's test sends them: the same batch shape.
        out[name] = [llm.generate([prompt], params, lora_request=lora, use_tqdm=False)[0].outputs[0].text
                     for prompt in job["prompts"]]
    print("RESULT " + json.dumps(out))

if __name__ == "__main__":
    main()
"""


def offline_outputs(engine_kwargs: dict[str, Any], adapters: dict[str, str | None], prompts: list[str],
                    max_tokens: int, env: dict[str, str]) -> dict[str, list[str]]:
    """Each model's greedy completion of each prompt through vLLM's offline LLM (adapter path None: the base
    model), in a subprocess (an engine of its own, gone when it exits)."""
    job = {"engine": engine_kwargs, "adapters": adapters, "prompts": prompts, "max_tokens": max_tokens}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], input=json.dumps(job), capture_output=True,
                          text=True, timeout=OFFLINE_TIMEOUT_S, cwd=ROOT, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the offline LLM failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, list[str]] = json.loads(lines[-1].removeprefix("RESULT "))
    return result
