"""Tiny video-family checkpoints, other video processor configs, and test clips.

The tiny checkpoints ship the stock video processor's config (``zipvl.testing.video_configs``).
``HAND_WRITTEN_CONFIGS`` are other settings a real checkpoint could hold (other Qwen pixel
limits, other LLaVA sizes, CLIP statistics), read from a folder of their own; a tiny
checkpoint without a video config (older ``zipvl.testing``) gets a copy with one of these.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from zipvl.testing import tiny_model_path
from zipvl.testing.configs import PATCH_SIZE, QWEN_MERGE_SIZE, QWEN_TEMPORAL_PATCH_SIZE

VIDEO_CONFIG_NAME = "video_preprocessor_config.json"
_COMMON = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3,
    "rescale_factor": 1 / 255, "do_sample_frames": False,
}
HAND_WRITTEN_CONFIGS = {
    "qwen2_vl": {**_COMMON, "video_processor_type": "Qwen2VLVideoProcessor",
                 "size": {"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
                 "patch_size": PATCH_SIZE, "merge_size": QWEN_MERGE_SIZE,
                 "temporal_patch_size": QWEN_TEMPORAL_PATCH_SIZE},
    "llava_next_video": {**_COMMON, "video_processor_type": "LlavaNextVideoVideoProcessor",
                         "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
                         "do_center_crop": True},
    "llava_onevision": {**_COMMON, "video_processor_type": "LlavaOnevisionVideoProcessor",
                        "size": {"height": 32, "width": 32}},
}
HAND_WRITTEN_CONFIGS["qwen2_5_vl"] = HAND_WRITTEN_CONFIGS["qwen2_vl"]


def has_video_config(folder: Path) -> bool:
    if (folder / VIDEO_CONFIG_NAME).is_file():
        return True
    processor_config = folder / "processor_config.json"
    return processor_config.is_file() and "video_processor" in json.loads(processor_config.read_text())


def video_checkpoint(family: str, workspace: Path) -> Path:
    """A tiny ``family`` checkpoint whose video processor config both processors read."""
    source = tiny_model_path(family)
    if has_video_config(source):
        return source
    target = workspace / f"{family}-video"
    if not target.exists():
        shutil.copytree(source, target)
        (target / VIDEO_CONFIG_NAME).write_text(json.dumps(HAND_WRITTEN_CONFIGS[family], indent=2) + "\n")
    return target


def make_clip(num_frames: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """Frames with smooth structure and noise (resampling differences show on both)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(num_frames):
        phase = index * 0.7 + seed
        base = np.stack([128 + 100 * np.sin(x / 5 + phase), 128 + 100 * np.cos(y / 7 - phase),
                         128 + 100 * np.sin((x + y) / 9 + phase)], axis=-1)
        noisy = base + rng.normal(0, 20, base.shape)
        frames.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return frames


# (frames, width, height): landscape, portrait, square, odd frame counts, one frame.
CLIP_SHAPES = [(4, 64, 48), (3, 40, 90), (5, 33, 33), (1, 120, 30), (6, 200, 150)]
