"""The video processor config each tiny video-capable checkpoint ships.

Real Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT-Video and LLaVA-OneVision checkpoints
carry a `video_preprocessor_config.json` next to the image processor's; with
it, and torchvision installed, the stock processor (`AutoProcessor`) reads
video. The stock video processors need torchvision to be built at all, so we
cannot build one and call its `save_pretrained`; instead this module writes
what it would save: the fields of `BaseVideoProcessor.to_dict()` (every set
`VideosKwargs` field of the class, `None`s and `default_to_square` left out,
`video_processor_type` added; transformers 5.23 to 5.25 agree), read from
these classes' defaults in transformers' source:

- `Qwen2VLVideoProcessor` (`models/qwen2_vl/video_processing_qwen2_vl.py`),
  which Qwen2.5-VL also uses (`AutoVideoProcessor` maps `qwen2_5_vl` to it);
- `LlavaNextVideoVideoProcessor` (`models/llava_next_video/...`);
- `LlavaOnevisionVideoProcessor` (`models/llava_onevision/...`).

Sizes match each tiny model's image side (`configs`, `processors`), so a clip
of 8 small frames is tens of tokens: Qwen frames get the images' pixel budget
(8 frames of 64 x 48 -> 4 x 3 x 4 = 48 tokens), LLaVA-NeXT-Video frames the
32 px CLIP view (4 pooled tokens a frame), OneVision frames the 32 px SigLIP
view (4 pooled tokens a frame, plus one newline token a video).
`processor_class` names the stock processor, as real checkpoints' files do
(the loader ignores it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zipvl.testing.configs import (
    CLIP_IMAGE_SIZE,
    PATCH_SIZE,
    QWEN_MERGE_SIZE,
    QWEN_TEMPORAL_PATCH_SIZE,
    SIGLIP_IMAGE_SIZE,
    VIDEO_FAMILIES,
)
from zipvl.testing.processors import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    SIGLIP_MEAN,
    SIGLIP_STD,
    STOCK_PROCESSOR_NAMES,
)

# transformers.utils.VIDEO_PROCESSOR_NAME
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"

# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the classes' default.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3  # PILImageResampling.BICUBIC, saved as its integer value

# Fields every one of the three classes saves with these values: the class
# defaults of BaseVideoProcessor / VideoProcessorMixin that are not None.
_COMMON_FIELDS: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    # Frames are passed already sampled, as the classes default to (for backward compatibility).
    "do_sample_frames": False,
    "resample": BICUBIC,
    "rescale_factor": 1 / 255,
    "return_metadata": False,
}


def _qwen_video_config() -> dict[str, Any]:
    return {
        **_COMMON_FIELDS,
        "video_processor_type": "Qwen2VLVideoProcessor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        # Qwen2VLVideoProcessor keeps its pixel budget here (min_pixels / max_pixels in __init__).
        "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": QWEN_TEMPORAL_PATCH_SIZE,
        "merge_size": QWEN_MERGE_SIZE,
        # The class defaults (they only bound frame sampling, which is off).
        "min_frames": 4,
        "max_frames": 768,
        "max_video_tokens": 128000,
    }


def _llava_next_video_config() -> dict[str, Any]:
    return {
        **_COMMON_FIELDS,
        "video_processor_type": "LlavaNextVideoVideoProcessor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        # Shortest edge to the CLIP view, then its centre square, as the image side's base view.
        "size": {"shortest_edge": CLIP_IMAGE_SIZE},
        "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        "do_center_crop": True,
    }


def _llava_onevision_video_config() -> dict[str, Any]:
    return {
        **_COMMON_FIELDS,
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        # SigLIP's normalization, as on the image side (the class default is CLIP's).
        "image_mean": SIGLIP_MEAN,
        "image_std": SIGLIP_STD,
        # Each frame is resized to the SigLIP view (the model pools a fixed patch grid).
        "size": {"height": SIGLIP_IMAGE_SIZE, "width": SIGLIP_IMAGE_SIZE},
    }


_BUILDERS = {
    "qwen2_vl": _qwen_video_config,
    "qwen2_5_vl": _qwen_video_config,
    "llava_next_video": _llava_next_video_config,
    "llava_onevision": _llava_onevision_video_config,
}


def video_processor_config(family: str) -> dict[str, Any]:
    """What `family`'s stock video processor would save (see the module docstring)."""
    if family not in VIDEO_FAMILIES:
        raise ValueError(f"family {family!r} reads no video; video families: "
                         f"{', '.join(VIDEO_FAMILIES)}")
    return {**_BUILDERS[family](), "processor_class": STOCK_PROCESSOR_NAMES[family]}


def video_processor_json(family: str) -> str:
    """`video_processor_config(family)` as the stock `to_json_string` writes it."""
    return json.dumps(video_processor_config(family), indent=2, sort_keys=True) + "\n"


def write_video_processor_config(family: str, path: str | Path) -> Path:
    """Write `family`'s `video_preprocessor_config.json` into the checkpoint folder `path`."""
    target = Path(path) / VIDEO_PROCESSOR_FILE
    target.write_text(video_processor_json(family))
    return target
