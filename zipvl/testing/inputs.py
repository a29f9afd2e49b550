"""Synthetic test images and chat-formatted model inputs for the tiny models.

`build_inputs` turns (prompt, images) into model inputs through a family's
chat template and processor, for the ZipVL tests and as the independent
reference of the pipeline's end-to-end tests (the pipeline builds its own in
``pipeline/prompts.py``, so a mistake in either shows). A video is fed as its
frames, i.e. several images in one prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from zipvl.testing.configs import SUPPORTED_FAMILIES, VISION_FAMILIES


def make_test_image(seed: int, size: tuple[int, int] = (48, 48)) -> Image.Image:
    """A deterministic RGB image of `size` = (width, height) for `seed`.

    A smooth colour gradient plus a few solid rectangles: structured enough
    that different seeds give clearly different pixels (and vision features).
    """
    width, height = size
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    cols = np.linspace(0.0, 1.0, width)[None, :, None]
    start, row_slope, col_slope = rng.uniform(0, 1, size=(3, 3))
    pixels = (start + row_slope * rows + col_slope * cols) % 1.0
    for _ in range(3):
        top, bottom = sorted(rng.integers(0, height, size=2))
        left, right = sorted(rng.integers(0, width, size=2))
        pixels[top : bottom + 1, left : right + 1] = rng.uniform(0, 1, size=3)
    return Image.fromarray((pixels * 255).round().astype(np.uint8), mode="RGB")


def chat_messages(prompt: str, num_images: int = 0) -> list[dict]:
    """One user turn: `num_images` image parts, then the prompt text."""
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def build_inputs(
    processor: ProcessorMixin | PreTrainedTokenizerBase,
    family: str,
    prompt: str | Sequence[str],
    images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
) -> BatchFeature:
    """Model inputs (`return_tensors="pt"`) for one prompt or a left-padded batch.

    `prompt` a string: one sample, `images` a flat list of its images (may be
    empty). `prompt` a list: a batch, `images` one list of images per prompt
    (or None). Each sample becomes one user turn with its images first, rendered
    by the processor's chat template with the generation prompt appended.
    Text families take a tokenizer and no images.
    """
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")
    if isinstance(prompt, str):
        prompts = [prompt]
        images_per_prompt = [list(images or [])]
    else:
        prompts = list(prompt)
        images_per_prompt = (
            [list(sample) for sample in images] if images is not None else [[] for _ in prompts]
        )
        if len(images_per_prompt) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images_per_prompt)} image lists")
    if family not in VISION_FAMILIES and any(images_per_prompt):
        raise ValueError(f"family {family!r} is text-only; it takes no images")

    texts = [
        processor.apply_chat_template(
            chat_messages(text, len(sample_images)), tokenize=False, add_generation_prompt=True
        )
        for text, sample_images in zip(prompts, images_per_prompt)
    ]
    # Batched generation needs left padding (new tokens are appended on the right).
    if family not in VISION_FAMILIES:
        return processor(
            texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        )
    flat_images = [image for sample_images in images_per_prompt for image in sample_images]
    return processor(
        text=texts,
        images=flat_images or None,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )
