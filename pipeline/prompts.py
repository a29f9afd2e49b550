"""Turn a task and a row into the model's inputs: prompt text, chat template, processor.

Each row becomes one user turn holding its images first (a video is its frames,
i.e. several images) and then the text, rendered by the checkpoint's own chat
template with the generation prompt appended — the format LLaVA-1.5/NeXT and
Qwen2-VL were instruction-tuned on. A batch is padded on the left, since
generation appends new tokens on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from transformers import BatchFeature


class PromptError(ValueError):
    """A row cannot be turned into a prompt (e.g. a VQA row without a question)."""


def prompt_text(task: Any, question: str | None) -> str:
    """The user text for one row: the task's prompt, with the row's question for ``vqa``.

    `task` is the job's ``task`` section (``pipeline.spec.TaskSection``).
    """
    if task.type == "vqa":
        if question is None or not str(question).strip():
            raise PromptError("the row's question cell is empty")
        return task.render_prompt(str(question).strip())
    return task.render_prompt(None)


def chat_messages(text: str, num_images: int) -> list[dict[str, Any]]:
    """One user turn: `num_images` image parts, then the text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def render_chat(processor: Any, text: str, num_images: int) -> str:
    """The prompt string of one row through the processor's chat template."""
    return processor.apply_chat_template(
        chat_messages(text, num_images), tokenize=False, add_generation_prompt=True
    )


def build_model_inputs(
    processor: Any, texts: Sequence[str], images: Sequence[Sequence[Image.Image]]
) -> BatchFeature:
    """Left-padded model inputs (``return_tensors="pt"``) for a batch of rows."""
    if len(texts) != len(images):
        raise ValueError(f"{len(texts)} texts but {len(images)} image lists")
    rendered = [render_chat(processor, text, len(row_images)) for text, row_images in zip(texts, images)]
    flat_images = [image for row_images in images for image in row_images]
    # The chat template already wrote the special tokens (BOS etc.).
    return processor(
        text=rendered,
        images=flat_images or None,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )


def limit_image_tokens(processor: Any, family: str, max_image_tokens: int | None) -> None:
    """Cap the visual tokens per image where the family's processor allows it.

    Qwen2-VL / Qwen2.5-VL resize each image to at most ``max_pixels``; one token
    covers ``(patch_size * merge_size)^2`` pixels. LLaVA-1.5 has a fixed count
    (its image processor crops to one size) and LLaVA-NeXT's count follows its
    grid pinpoints, so the cap does not apply to them.
    """
    from pipeline.families import FAMILIES

    if max_image_tokens is None or not FAMILIES[family].caps_image_tokens:
        return
    image_processor = processor.image_processor
    pixels_per_token = (image_processor.patch_size * image_processor.merge_size) ** 2
    max_pixels = max_image_tokens * pixels_per_token
    size = dict(image_processor.size)
    size["longest_edge"] = max_pixels
    size["shortest_edge"] = min(size.get("shortest_edge") or max_pixels, max_pixels)
    image_processor.size = size
