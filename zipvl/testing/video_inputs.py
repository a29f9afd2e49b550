"""Video prompts for the tiny LLaVA-NeXT-Video / LLaVA-OneVision models, without torchvision.

The stock video processors need torchvision, so `build_video_inputs` builds
`pixel_values_videos` (batch, frames, channels, height, width) by hand from
frames already at the model's view size: rescale and normalize with the
checkpoint's own video processor config (`video_configs`), which for such
frames is all the stock processor does. The `<video>` placeholder is expanded
by the stock processor's own `replace_video_token`, so the token count is
transformers' and the model checks it against its features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from zipvl.testing.inputs import make_test_image
from zipvl.testing.video_configs import video_processor_config

# Families whose model takes pixel_values_videos as (batch, frames, channels, height, width);
# the Qwen-VL ones take flattened patches plus a grid instead.
FRAME_VIDEO_FAMILIES: tuple[str, ...] = ("llava_next_video", "llava_onevision")


def video_frame_size(family: str) -> tuple[int, int]:
    """(width, height) of the frames `family`'s video processor hands the model."""
    _check_family(family)
    config = video_processor_config(family)
    view = config.get("crop_size") or config["size"]
    return view["width"], view["height"]


def make_test_video(seed: int, family: str, num_frames: int = 8) -> list[Image.Image]:
    """`num_frames` deterministic frames at `family`'s view size (`make_test_image` per frame)."""
    size = video_frame_size(family)
    return [make_test_image(1000 * seed + index, size=size) for index in range(num_frames)]


def video_pixel_values(family: str, frames: Sequence[Image.Image]) -> torch.Tensor:
    """(frames, channels, height, width) float32: the frames rescaled and normalized."""
    width, height = video_frame_size(family)
    wrong = [frame.size for frame in frames if frame.size != (width, height)]
    if wrong:
        raise ValueError(f"{family} video frames must be {width} x {height} px (the model's view); "
                         f"got sizes {wrong}: resize them first")
    if not frames:
        raise ValueError("a video needs at least one frame")
    config = video_processor_config(family)
    pixels = np.stack([np.asarray(frame.convert("RGB"), dtype=np.float64) for frame in frames])
    pixels = pixels * config["rescale_factor"]
    pixels = (pixels - np.array(config["image_mean"])) / np.array(config["image_std"])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).contiguous()


def video_chat_messages(prompt: str) -> list[dict]:
    """One user turn: a video part, then the prompt text."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]


def build_video_inputs(
    processor: ProcessorMixin,
    family: str,
    prompt: str | Sequence[str],
    videos: Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
) -> BatchFeature:
    """Model inputs for one video prompt or a left-padded batch of them (`return_tensors="pt"`).

    `prompt` a string: `videos` is that sample's frames; a list: `videos` holds
    one frame list per prompt (all the same length: the model stacks them).
    """
    _check_family(family)
    if isinstance(prompt, str):
        prompts, clips = [prompt], [list(videos)]
    else:
        prompts, clips = list(prompt), [list(clip) for clip in videos]
    if len(prompts) != len(clips):
        raise ValueError(f"{len(prompts)} prompts but {len(clips)} videos")
    if len({len(clip) for clip in clips}) > 1:
        raise ValueError(f"every video of a batch needs the same number of frames, got "
                         f"{[len(clip) for clip in clips]}")
    pixel_values = torch.stack([video_pixel_values(family, clip) for clip in clips])
    texts = []
    for index, text in enumerate(prompts):
        rendered = processor.apply_chat_template(video_chat_messages(text), tokenize=False,
                                                 add_generation_prompt=True)
        if rendered.count(processor.video_token) != 1:
            raise ValueError(f"the chat template wrote {rendered.count(processor.video_token)} "
                             f"{processor.video_token!r} placeholders for one video")
        expanded = processor.replace_video_token({"pixel_values_videos": pixel_values}, index)
        texts.append(rendered.replace(processor.video_token, expanded))
    text_inputs = processor.tokenizer(texts, padding=True, padding_side="left",
                                      add_special_tokens=False, return_tensors="pt")
    return BatchFeature({**text_inputs, "pixel_values_videos": pixel_values})


def _check_family(family: str) -> None:
    if family not in FRAME_VIDEO_FAMILIES:
        raise ValueError(f"build_video_inputs covers {', '.join(FRAME_VIDEO_FAMILIES)}, "
                         f"not {family!r}")
