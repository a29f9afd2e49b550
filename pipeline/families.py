"""The model families the pipeline runs: the one list, and what differs between them.

A family is a Hugging Face ``model_type``. Everything else in the pipeline that
depends on the family asks this registry: which types a job may name (``presets``,
``spec``, ``preflight``), whether ``max_image_tokens`` applies (``prompts``), and
which processor to load where the stock one cannot be built (``model_runner``).
Every family goes through ``zipvl.enable`` (a test checks each is in
``zipvl.SUPPORTED_MODEL_TYPES``) and reads video as frames (a multi-image prompt).

Families whose stock processor also builds a video processor (which needs torchvision)
name an image-only processor of ``pipeline.image_only_processors``. This module imports
no transformers (the driver and the decode tasks read it; transformers' processors
cost seconds to import). ``zipvl.testing`` keeps its own copies of those processors for
its tiny checkpoints: ``zipvl`` never imports ``pipeline``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """What the pipeline needs to know about one model family."""

    model_type: str
    # max_image_tokens caps its visual tokens (its processor resizes to a pixel budget;
    # LLaVA-1.5 has a fixed count and LLaVA-NeXT's follows its grid pinpoints).
    caps_image_tokens: bool = False
    # The class in pipeline.image_only_processors loaded instead of the stock processor
    # when torchvision does not import (then with the torchvision-free video processor of
    # pipeline.video_processing attached). A name, not the class: see that module.
    image_only_processor: str | None = None
    # It reads video as video ({"type": "video"} content and its own video processor);
    # otherwise a video's frames reach it as images.
    native_video: bool = False
    # Its video frame count must be a multiple of this (Qwen2-VL's temporal patches
    # take frames in pairs; the processor would pad an odd count with a copy).
    video_frame_multiple: int = 1


FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (
    ModelFamily("llava"),
    ModelFamily("llava_next"),
    ModelFamily("llava_next_video", image_only_processor="LlavaNextVideoImageOnlyProcessor",
                native_video=True),
    ModelFamily("llava_onevision", image_only_processor="LlavaOnevisionImageOnlyProcessor",
                native_video=True),
    ModelFamily("qwen2_vl", caps_image_tokens=True, image_only_processor="Qwen2VLImageOnlyProcessor",
                native_video=True, video_frame_multiple=2),
    ModelFamily("qwen2_5_vl", caps_image_tokens=True,
                image_only_processor="Qwen2_5_VLImageOnlyProcessor", native_video=True,
                video_frame_multiple=2),
)}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def reads_native_video(mode: str, family: str) -> bool:
    """Whether ``video.mode`` (``auto``, ``native``, ``frames``) means native video for
    `family`; ``ValueError`` where ``native`` is asked of an image-only family."""
    if mode == "frames":
        return False
    if mode == "native" and not FAMILIES[family].native_video:
        raise ValueError(f"the {family} family reads images only: use video.mode frames (or auto)")
    return FAMILIES[family].native_video


@functools.cache
def torchvision_imports() -> bool:
    """Whether torchvision imports here (installed is not enough: a build for another
    torch fails at import)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True
