"""Turn a task and a row into the model's inputs: prompt text, chat template, processor.

Each row becomes one user turn holding its media first and then the text, rendered
by the checkpoint's own chat template with the generation prompt appended — the
format the checkpoints were instruction-tuned on. Media is an image, a video read
natively (``{"type": "video"}`` content, preprocessed by the family's video
processor with the sampled frame rate, which Qwen2.5-VL's time positions need), or a
video's frames as images (image-only families). A batch is padded on the left, since
generation appends new tokens on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RowMedia:
    """One row's media: its images, or one video read natively (its sampled frames)."""

    images: tuple[Image.Image, ...] = ()
    video: tuple[Image.Image, ...] | None = None
    sampled_fps: float | None = None  # frames per second of the sampling (video only)

    @classmethod
    def of(cls, media: RowMedia | Sequence[Image.Image]) -> RowMedia:
        """`media` as ``RowMedia``; a plain sequence is a row's images."""
        return media if isinstance(media, RowMedia) else cls(images=tuple(media))


def chat_messages(text: str, num_images: int, has_video: bool = False) -> list[dict[str, Any]]:
    """One user turn: a video part or `num_images` image parts, then the text."""
    content: list[dict[str, Any]] = [{"type": "video"}] if has_video else []
    content += [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def render_chat(processor: Any, text: str, num_images: int, has_video: bool = False) -> str:
    """The prompt string of one row through the processor's chat template."""
    return processor.apply_chat_template(
        chat_messages(text, num_images, has_video), tokenize=False, add_generation_prompt=True
    )


def build_model_inputs(
    processor: Any, texts: Sequence[str], media: Sequence[RowMedia | Sequence[Image.Image]]
) -> BatchFeature:
    """Left-padded model inputs (``return_tensors="pt"``) for a batch of rows."""
    if len(texts) != len(media):
        raise ValueError(f"{len(texts)} texts but {len(media)} rows of media")
    rows = [RowMedia.of(row) for row in media]
    rendered = [render_chat(processor, text, len(row.images), row.video is not None)
                for text, row in zip(texts, rows)]
    flat_images = [image for row in rows for image in row.images]
    videos = [list(row.video) for row in rows if row.video is not None]
    video_kwargs: dict[str, Any] = {}
    if videos:
        from transformers.video_utils import VideoMetadata

        # The frames are sampled already (pipeline.video): the processor must take them as
        # they are, and learn the rate they were sampled at from the metadata.
        video_kwargs = {"videos": videos, "do_sample_frames": False, "video_metadata": [
            VideoMetadata(total_num_frames=len(row.video), fps=row.sampled_fps,
                          frames_indices=list(range(len(row.video))),
                          duration=len(row.video) / row.sampled_fps if row.sampled_fps else None)
            for row in rows if row.video is not None]}
    # The chat template already wrote the special tokens (BOS etc.).
    return processor(
        text=rendered,
        images=flat_images or None,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
        **video_kwargs,
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


def limit_video_tokens(processor: Any, family: str, max_video_tokens: int | None) -> None:
    """Cap one video's visual tokens where the family's video processor allows it.

    Qwen2-VL / Qwen2.5-VL's video processors spread a budget of ``max_video_tokens``
    over a clip's frames (``cap_pixels_per_frame``, the reference qwen-vl-utils
    behaviour); without a cap each frame keeps the processor's own per-frame limit.
    The per-image cap (``limit_image_tokens``) never applies to video frames.
    """
    from pipeline.families import FAMILIES

    video_processor = getattr(processor, "video_processor", None)
    if video_processor is None or not FAMILIES[family].caps_image_tokens:
        return
    video_processor.cap_pixels_per_frame = max_video_tokens is not None
    if max_video_tokens is not None:
        video_processor.max_video_tokens = max_video_tokens
