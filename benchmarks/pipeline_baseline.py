"""What the pipeline benchmark runs on, and the plain loop it is compared against.

Three things, all offline and cached under ``.cache/`` (ignored by git):

* ``dataset_path(rows)``: a Parquet of synthetic photos-like images (gradients,
  shapes and sensor-like noise, so JPEG/PNG decoding costs what it costs on real
  pictures) at varied sizes from 256x256 to 1280x720, stored as the
  ``{bytes, path}`` struct Hugging Face ``datasets`` uses.
* ``bench_llava_path()``: a random-weight LLaVA-1.5-shaped checkpoint that is
  small enough for a 2-core CPU but not trivial: a 4-layer, 512-wide decoder
  and a CLIP tower at 224 px / 16 px patches (196 visual tokens per image), so
  ``generate`` costs about a second per batch of 4 instead of the tiny model's
  ~10 ms. Built from ``zipvl.testing``'s tiny LLaVA config with the sizes
  raised, saved with ``save_pretrained`` and loaded by the pipeline like any
  local checkpoint (``model.name_or_path``); the model presets cannot carry
  size overrides. Its outputs are noise, like the tiny model's.
* ``run_plain_loop(...)``: what a user would write instead of the pipeline: one
  process reads the Parquet, decodes each image with Pillow, renders the chat
  template, runs the processor and ``generate`` batch by batch (same batch
  size, greedy, same ZipVL config), collects the text and writes one Parquet.
  It times each step, so the share of wall time spent inside ``generate`` can be
  set beside the pipeline's.

Run as a module (``python -m benchmarks.pipeline_baseline --data ... --model ...
--output ... --timings ...``) so that its wall time, like ``zipvl-batch run``'s,
includes starting Python and importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
DATA_DIR = CACHE_DIR / "bench-data"
MODEL_DIR = CACHE_DIR / "bench-models"

DATASET_SEED = 20250311
# (width, height): phone photos, web images, thumbnails, portrait shots, video stills.
IMAGE_SIZES = ((256, 256), (320, 240), (640, 480), (480, 640), (800, 600), (1024, 768), (1280, 720))

# The bench-llava shape (see the module docstring). Vision: 224 / 16 = 14 x 14 patches.
BENCH_TEXT_LAYERS = 4
BENCH_TEXT_HIDDEN = 512
BENCH_TEXT_INTERMEDIATE = 1408
BENCH_TEXT_HEADS = 8
BENCH_TEXT_KV_HEADS = 4
BENCH_VISION_LAYERS = 2
BENCH_VISION_HIDDEN = 256
BENCH_VISION_HEADS = 4
BENCH_IMAGE_SIZE = 224
BENCH_PATCH_SIZE = 16
BENCH_MODEL_SEED = 0


# ---------------------------------------------------------------- dataset


def _draw_image(rng: Any) -> tuple[bytes, str]:
    """One synthetic picture, encoded (2 of 3 JPEG, 1 of 3 PNG); returns bytes and suffix."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    top, bottom = rng.uniform(0, 255, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp
    pixels = np.broadcast_to(pixels, (height, width, 3)) + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        size = int(rng.integers(min(width, height) // 10, min(width, height) // 2))
        left, upper = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((left, upper, left + size, upper + size), fill=colour)
    buffer = io.BytesIO()
    if rng.random() < 2 / 3:
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), "jpg"
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def dataset_path(rows: int) -> Path:
    """A Parquet of `rows` synthetic images (``id``, ``image`` struct), written on first use."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = DATA_DIR / f"pipeline-images-{rows}-seed{DATASET_SEED}.parquet"
    if path.is_file():
        return path
    rng = np.random.default_rng(DATASET_SEED)
    ids, cells = [], []
    for index in range(rows):
        data, suffix = _draw_image(rng)
        ids.append(f"row-{index:05d}")
        cells.append({"bytes": data, "path": f"row-{index:05d}.{suffix}"})
    image_type = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    table = pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(cells, image_type)})
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    pq.write_table(table, staging)
    staging.replace(path)
    return path


# ---------------------------------------------------------------- bench-llava model


def _bench_llava_config() -> Any:
    from zipvl.testing.configs import tiny_config

    config = tiny_config("llava")
    text = config.text_config
    text.num_hidden_layers = BENCH_TEXT_LAYERS
    text.hidden_size = BENCH_TEXT_HIDDEN
    text.intermediate_size = BENCH_TEXT_INTERMEDIATE
    text.num_attention_heads = BENCH_TEXT_HEADS
    text.num_key_value_heads = BENCH_TEXT_KV_HEADS
    text.head_dim = BENCH_TEXT_HIDDEN // BENCH_TEXT_HEADS
    vision = config.vision_config
    vision.num_hidden_layers = BENCH_VISION_LAYERS
    vision.hidden_size = BENCH_VISION_HIDDEN
    vision.intermediate_size = 4 * BENCH_VISION_HIDDEN
    vision.num_attention_heads = BENCH_VISION_HEADS
    vision.projection_dim = BENCH_VISION_HIDDEN
    vision.image_size = BENCH_IMAGE_SIZE
    vision.patch_size = BENCH_PATCH_SIZE
    config.image_seq_length = (BENCH_IMAGE_SIZE // BENCH_PATCH_SIZE) ** 2
    return config


def _bench_llava_processor() -> Any:
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from zipvl.testing.processors import build_processor

    tiny = build_processor("llava")
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": BENCH_IMAGE_SIZE},
            crop_size={"height": BENCH_IMAGE_SIZE, "width": BENCH_IMAGE_SIZE},
        ),
        tokenizer=tiny.tokenizer,
        patch_size=BENCH_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS embedding, dropped by "default"
        chat_template=tiny.chat_template,
    )


def bench_llava_path() -> Path:
    """The saved bench-llava checkpoint, built on first use (rebuilt when its recipe changes)."""
    import torch
    import transformers
    from transformers import LlavaForConditionalGeneration

    config = _bench_llava_config()
    processor = _bench_llava_processor()
    recipe = "\n".join([transformers.__version__, str(BENCH_MODEL_SEED), config.to_json_string(),
                        processor.to_json_string()])
    fingerprint = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    target = MODEL_DIR / f"bench-llava-{fingerprint}"
    if (target / "config.json").is_file():
        return target
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bench-llava-", dir=MODEL_DIR))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BENCH_MODEL_SEED)
            model = LlavaForConditionalGeneration(config).eval()
        generation = model.generation_config
        generation.do_sample = False
        generation.bos_token_id = config.bos_token_id
        generation.eos_token_id = config.eos_token_id
        generation.pad_token_id = config.pad_token_id
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent builder's copy
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------- the plain loop


def run_plain_loop(
    data: Path,
    model_path: Path,
    zipvl_config: dict[str, Any] | None,
    batch_size: int,
    max_new_tokens: int,
    prompt: str,
    output: Path,
    timings: dict[str, float],
) -> int:
    """Caption every row of `data` in one process; writes `output`; returns the row count.

    `timings` receives seconds per step: ``load``, ``decode``, ``processor``,
    ``generate``, ``text_decode``, ``write``, and ``first_batch_started``, the epoch at
    which the first batch entered the model (the pipeline's report records the same).
    `zipvl_config` None runs dense.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - since
        return now

    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    import zipvl

    if zipvl_config is not None:
        model = zipvl.enable(model, zipvl.ZipVLConfig.from_dict(zipvl_config))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    now = step("load", start)

    table = pq.read_table(data, columns=["id", "image"])
    ids = table.column("id").to_pylist()
    cells = table.column("image").to_pylist()
    captions: list[str] = []
    with torch.inference_mode():
        for first in range(0, len(ids), batch_size):
            images = [Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
                      for cell in cells[first:first + batch_size]]
            now = step("decode", now)
            inputs = processor(text=[chat] * len(images), images=images, padding=True,
                               padding_side="left", add_special_tokens=False, return_tensors="pt")
            now = step("processor", now)
            timings.setdefault("first_batch_started", time.time())
            sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                       **zipvl.cache_kwargs(model))
            now = step("generate", now)
            new_tokens = sequences[:, inputs["input_ids"].shape[1]:]
            captions += [text.strip() for text in
                         processor.batch_decode(new_tokens, skip_special_tokens=True)]
            now = step("text_decode", now)
    pq.write_table(pa.table({"id": ids, "output": captions}), output)
    step("write", now)
    return len(ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--zipvl", default="null", help="ZipVLConfig fields as JSON; null = dense")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--prompt", default="Describe this image in one sentence.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--timings", type=Path, required=True, help="JSON file for the step times")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    rows = run_plain_loop(args.data, args.model, json.loads(args.zipvl), args.batch_size,
                          args.max_new_tokens, args.prompt, args.output, timings)
    args.timings.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads(),
                                        "seconds": timings}) + "\n")


if __name__ == "__main__":
    main()
