"""LLaVA-NeXT-Video and LLaVA-OneVision video preprocessing without torchvision.

Both stock classes (``LlavaNextVideoVideoProcessor``, ``LlavaOnevisionVideoProcessor``)
are ``BaseVideoProcessor._preprocess`` with other settings: resize (NeXT-Video: shortest
edge, then a centre crop; OneVision: a fixed height x width), rescale and normalise, and
``pixel_values_videos`` as one (frames, channels, height, width) tensor per video, which
``return_tensors="pt"`` stacks to (videos, frames, channels, height, width).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_utils import make_batched_metadata

from pipeline.video_processing.call_options import resolve_call_options
from pipeline.video_processing.frames import (
    batched_uint8_videos,
    center_crop_video,
    rescale_and_normalize,
    resize_video,
    resized_height_width,
)
from pipeline.video_processing.settings import VideoProcessingSettings


class LlavaVideoProcessor:
    """A callable stand-in for the LLaVA-NeXT-Video / OneVision video processors."""

    valid_kwargs = VideosKwargs
    model_input_names = ["pixel_values_videos"]

    def __init__(self, settings: VideoProcessingSettings) -> None:
        if settings.is_qwen:
            raise ValueError(f"{settings.family} is a Qwen-VL family")
        self.settings = settings
        self.size = dict(settings.size) if settings.size else settings.size
        self.crop_size = dict(settings.crop_size) if settings.crop_size else settings.crop_size
        self.return_metadata = settings.return_metadata

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        options = resolve_call_options(self.settings, kwargs)
        arrays = batched_uint8_videos(videos, options["do_convert_rgb"])
        metadata = make_batched_metadata(arrays, video_metadata=options["video_metadata"])
        processed = []
        for video in arrays:
            if options["do_resize"]:
                height, width = resized_height_width(video.shape[1], video.shape[2], options["size"])
                video = resize_video(video, height, width, options["resample"])
            if options["do_center_crop"]:
                video = center_crop_video(video, options["crop_size"])
            pixels = rescale_and_normalize(video, options["do_rescale"], options["rescale_factor"],
                                           options["do_normalize"], options["image_mean"], options["image_std"])
            tensor = torch.from_numpy(pixels)
            processed.append(tensor if options["device"] is None else tensor.to(options["device"]))
        result = BatchFeature(data={"pixel_values_videos": processed}, tensor_type=options["return_tensors"])
        if options["return_metadata"]:
            result["video_metadata"] = metadata
        return result
