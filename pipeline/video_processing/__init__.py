"""Video processors that need no torchvision, one module per family kind, and their loader.

Every stock transformers video processor derives from ``BaseVideoProcessor``, which
needs torchvision; beside this project's torch it does not import, and the stock
Qwen2-VL / Qwen2.5-VL / LLaVA-NeXT-Video / LLaVA-OneVision processors cannot even be
built. These mirror them in PIL and NumPy: ``settings`` resolves a checkpoint's settings
as ``from_pretrained`` does, ``qwen_vl`` and ``llava_video`` process, ``frame_size`` tells
the decoder what size the processor would resize to, and ``loader`` hands the image-only
processor its video processor.
"""

from pipeline.video_processing.frame_size import frame_size
from pipeline.video_processing.llava_video import LlavaVideoProcessor
from pipeline.video_processing.loader import (
    VIDEO_FAMILIES,
    attach_video_processor,
    load_processor_without_torchvision,
    load_video_processor,
)
from pipeline.video_processing.qwen_vl import QwenVLVideoProcessor
from pipeline.video_processing.settings import (
    VideoProcessingSettings,
    load_video_settings,
    settings_from_dict,
    with_video_token_cap,
)

__all__ = [
    "VIDEO_FAMILIES",
    "LlavaVideoProcessor",
    "QwenVLVideoProcessor",
    "VideoProcessingSettings",
    "attach_video_processor",
    "frame_size",
    "load_processor_without_torchvision",
    "load_video_processor",
    "load_video_settings",
    "settings_from_dict",
    "with_video_token_cap",
]
