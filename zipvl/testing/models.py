"""Build, save and cache the tiny random-weight models.

Weights are drawn from a private RNG stream seeded with `seed`, so a build is
reproducible and does not disturb the caller's global RNG. Saved folders are
ordinary checkpoints: `AutoModelForCausalLM` / `AutoModelForImageTextToText`
and `AutoTokenizer` / `AutoProcessor` load them with `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import (
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2ForCausalLM,
    Qwen2VLForConditionalGeneration,
)

from zipvl.testing.configs import SUPPORTED_FAMILIES, VIDEO_FAMILIES, tiny_config
from zipvl.testing.processors import STOCK_PROCESSOR_NAMES, build_processor
from zipvl.testing.video_configs import video_processor_json, write_video_processor_config

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "llava_next_video": LlavaNextVideoForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
}

CACHE_ENV_VAR = "ZIPVL_TINY_CACHE"
FINGERPRINT_FILE = "tiny_model_fingerprint.txt"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def build_tiny_model(
    family: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerBase]:
    """A tiny random-weight `family` model in eval mode and its processor (or tokenizer).

    Same `seed` -> identical weights; the global torch RNG is left untouched.
    Greedy decoding is the default generation mode, stopping at the family's
    end-of-turn token.
    """
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
    config = tiny_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_CLASSES[family](config)
    model = model.to(dtype).eval()
    generation_config = model.generation_config
    generation_config.do_sample = False
    generation_config.bos_token_id = config.bos_token_id
    generation_config.eos_token_id = config.eos_token_id
    generation_config.pad_token_id = config.pad_token_id
    return model, build_processor(family)


def save_tiny_model(family: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save the tiny `family` model (float32) and its processor into `path`; returns `path`.

    A video family's folder also gets the stock video processor's config
    (`video_configs`), as real checkpoints have.
    """
    path = Path(path)
    model, processor = build_tiny_model(family, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if family in STOCK_PROCESSOR_NAMES:
        _name_stock_processor_class(path, STOCK_PROCESSOR_NAMES[family])
    if family in VIDEO_FAMILIES:
        write_video_processor_config(family, path)
    return path


def _name_stock_processor_class(path: Path, class_name: str) -> None:
    # A real checkpoint names the stock processor class; so does ours, so that
    # loading code written for real checkpoints is exercised by the tiny ones.
    for file_name in ("processor_config.json", "tokenizer_config.json"):
        config_file = path / file_name
        if not config_file.is_file():
            continue
        config = json.loads(config_file.read_text())
        if "processor_class" in config:
            config["processor_class"] = class_name
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def default_cache_dir() -> Path:
    """`$ZIPVL_TINY_CACHE` if set, else `<repo>/.cache/tiny-models`."""
    override = os.environ.get(CACHE_ENV_VAR)
    return Path(override) if override else _REPO_ROOT / ".cache" / "tiny-models"


# Raised when what `save_tiny_model` writes changes in a way the parts below do not
# show (2: video families also write video_preprocessor_config.json).
CHECKPOINT_LAYOUT_VERSION = 2


def tiny_model_fingerprint(family: str, seed: int = 0) -> str:
    """A hash of everything a saved tiny checkpoint is built from.

    Stored in the cached folder, so a cache written by older code (other
    configs, tokenizer, templates, transformers version) is rebuilt rather
    than silently reused.
    """
    processor = build_processor(family)
    tokenizer = getattr(processor, "tokenizer", processor)
    parts = [
        str(CHECKPOINT_LAYOUT_VERSION),
        transformers.__version__,
        str(seed),
        tiny_config(family).to_json_string(),
        tokenizer.backend_tokenizer.to_str(),
        str(tokenizer.chat_template),
        processor.to_json_string() if isinstance(processor, ProcessorMixin) else "",
        video_processor_json(family) if family in VIDEO_FAMILIES else "",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _is_current(folder: Path, fingerprint: str) -> bool:
    stamp = folder / FINGERPRINT_FILE
    return stamp.is_file() and stamp.read_text().strip() == fingerprint


def tiny_model_path(family: str, cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """A saved tiny `family` checkpoint, built on first use and reused afterwards.

    Lives at `<cache_dir>/<family>-seed<seed>` (`cache_dir` defaults to
    `default_cache_dir()`). Concurrent callers are safe: each builds into its
    own temporary folder and renames it into place; the first rename wins and
    the others discard their copy. A stale folder (other fingerprint) is
    replaced.
    """
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{family}-seed{seed}"
    fingerprint = tiny_model_fingerprint(family, seed)
    if _is_current(target, fingerprint):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-seed{seed}-", dir=root))
    stale = root / f".stale-{staging.name}"
    try:
        save_tiny_model(family, staging, seed=seed)
        (staging / FINGERPRINT_FILE).write_text(fingerprint + "\n")
        if target.is_dir() and not _is_current(target, fingerprint):
            try:
                target.rename(stale)
            except OSError:
                pass  # another process moved it first
        try:
            staging.rename(target)
        except OSError:
            # Another process renamed its complete copy first (rename onto a
            # non-empty folder fails); use theirs.
            if not _is_current(target, fingerprint):
                raise
    finally:
        for leftover in (staging, stale):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target
