"""Give a family's image-only processor a video processor that needs no torchvision.

Where torchvision does not import (``pipeline.families.torchvision_imports``), the stock
processor of a video family cannot be built; ``pipeline.model_runner.load_processor``
then loads the family's image-only processor (``pipeline.image_only_processors``) and
this sets its ``video_processor`` to ours, built from the checkpoint's own video
settings. ``ProcessorMixin.__call__`` then expands the video placeholder and returns the
video inputs as the stock processor would.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import ProcessorMixin

from pipeline.video_processing.llava_video import LlavaVideoProcessor
from pipeline.video_processing.qwen_vl import QwenVLVideoProcessor
from pipeline.video_processing.settings import STOCK_VIDEO_PROCESSORS, load_video_settings

VIDEO_FAMILIES: tuple[str, ...] = tuple(STOCK_VIDEO_PROCESSORS)


def load_video_processor(location: str | os.PathLike, family: str, hub_kwargs: dict[str, Any] | None = None
                         ) -> QwenVLVideoProcessor | LlavaVideoProcessor:
    """The torchvision-free video processor of the ``family`` checkpoint at ``location``
    (local folder or hub id; ``hub_kwargs`` as for ``from_pretrained``)."""
    settings = load_video_settings(location, family, hub_kwargs)
    return QwenVLVideoProcessor(settings) if settings.is_qwen else LlavaVideoProcessor(settings)


def attach_video_processor(processor: ProcessorMixin, location: str | os.PathLike, family: str,
                           hub_kwargs: dict[str, Any] | None = None) -> ProcessorMixin:
    """``processor`` with its ``video_processor`` set to ours; returns it."""
    processor.video_processor = load_video_processor(location, family, hub_kwargs)
    return processor


def load_processor_without_torchvision(location: str | os.PathLike, family: str,
                                       hub_kwargs: dict[str, Any] | None = None) -> ProcessorMixin:
    """The family's image-only processor, with our video processor where the family has video."""
    from pipeline.image_only_processors import IMAGE_ONLY_PROCESSORS

    image_only = IMAGE_ONLY_PROCESSORS.get(family)
    if image_only is None:
        raise ValueError(f"model type {family!r} has no image-only processor to load without torchvision")
    processor = image_only.from_pretrained(location, **(hub_kwargs or {}))
    if family in VIDEO_FAMILIES:
        attach_video_processor(processor, location, family, hub_kwargs)
    return processor
