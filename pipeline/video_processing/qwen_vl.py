"""Qwen2-VL / Qwen2.5-VL video preprocessing without torchvision.

Mirrors ``transformers.models.qwen2_vl.video_processing_qwen2_vl.Qwen2VLVideoProcessor``
(which Qwen2.5-VL checkpoints load too): ``smart_resize`` to the video pixel limits
(``size["shortest_edge"]`` / ``size["longest_edge"]``, the latter optionally capped per
frame by ``cap_pixels_per_frame`` / ``max_video_tokens``), rescale and normalise, the last
frame repeated up to a multiple of ``temporal_patch_size``, and ``patchify``'s layout.
``Qwen2_5_VLProcessor`` asks for ``return_metadata`` and reads each video's
``sampled_fps`` for ``second_per_grid_ts``; the metadata is built by the stock
``make_batched_metadata``, so a call without ``video_metadata`` gets the stock default
(24 fps) and one with ``fps`` / ``frames_indices`` / ``total_num_frames`` the stock rate.
Frames are sampled by the decoder, not here (``do_sample_frames`` must be off).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import VideosKwargs
from transformers.video_utils import make_batched_metadata

from pipeline.video_processing.call_options import resolve_call_options
from pipeline.video_processing.frames import (
    batched_uint8_videos,
    rescale_and_normalize,
    resize_video,
)
from pipeline.video_processing.settings import VideoProcessingSettings


class QwenVideoKwargs(VideosKwargs, total=False):
    """``Qwen2VLVideoProcessorInitKwargs``: what a call may override (its ``valid_kwargs``,
    read by ``ProcessorMixin._merge_kwargs`` to route keyword arguments to videos)."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


def capped_max_pixels(size: dict[str, int], num_frames: int, factor: int, temporal_factor: int,
                      cap_pixels_per_frame: bool | None, max_video_tokens: int) -> int:
    """``Qwen2VLVideoProcessor.resize``'s per-frame pixel limit for a video of ``num_frames``
    under a budget of ``max_video_tokens`` (transformers 5.25's resize: the call's value, else
    the processor's)."""
    max_pixels = size["longest_edge"]
    if cap_pixels_per_frame:
        total_pixels = int(max_video_tokens * factor * factor * 0.9)
        max_pixels = max(min(max_pixels, total_pixels * temporal_factor // num_frames),
                         int(size["shortest_edge"] * 1.05))
    return max_pixels


def qwen_frame_height_width(settings: VideoProcessingSettings, height: int, width: int, num_frames: int,
                            options: dict[str, Any] | None = None) -> tuple[int, int]:
    """The (height, width) the Qwen video processor resizes a ``num_frames`` video's frames to."""
    options = options or resolve_call_options(settings, {})
    size = options["size"]
    if not size.get("shortest_edge") or not size.get("longest_edge"):
        raise ValueError(f"`size` dict must contain 'shortest_edge' and 'longest_edge' keys but got {size}.")
    factor = options["patch_size"] * options["merge_size"]
    max_video_tokens = settings.max_video_tokens if options["max_video_tokens"] is None else options["max_video_tokens"]
    max_pixels = capped_max_pixels(size, num_frames, factor, options["temporal_patch_size"],
                                   options["cap_pixels_per_frame"], max_video_tokens)
    return smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"], max_pixels=max_pixels)


def patchify(video: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int
             ) -> tuple[np.ndarray, int, int, int]:
    """``Qwen2VLVideoProcessor.patchify`` for one (frames, channels, height, width) video."""
    if pad := -video.shape[0] % temporal_patch_size:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    num_frames, channels, height, width = video.shape
    grid_t, grid_h, grid_w = num_frames // temporal_patch_size, height // patch_size, width // patch_size
    patches = video.reshape(grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size,
                            patch_size, grid_w // merge_size, merge_size, patch_size)
    # The stock permute (0, 1, 4, 7, 5, 8, 3, 2, 6, 9) without its batch axis.
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return flat, grid_t, grid_h, grid_w


class QwenVLVideoProcessor:
    """A callable stand-in for ``Qwen2VLVideoProcessor`` (NumPy and PIL, no torchvision)."""

    valid_kwargs = QwenVideoKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, settings: VideoProcessingSettings) -> None:
        if not settings.is_qwen:
            raise ValueError(f"{settings.family} is not a Qwen-VL family")
        self.settings = settings
        # The attributes the stock processors and callers read.
        self.patch_size = settings.patch_size
        self.temporal_patch_size = settings.temporal_patch_size
        self.merge_size = settings.merge_size
        self.size = dict(settings.size)
        self.return_metadata = settings.return_metadata

    # The stock processor's token budget is set by assigning these two attributes (what
    # ``pipeline.prompts.limit_video_tokens`` does); here they live in the frozen settings.
    @property
    def cap_pixels_per_frame(self) -> bool | None:
        return self.settings.cap_pixels_per_frame

    @cap_pixels_per_frame.setter
    def cap_pixels_per_frame(self, value: bool | None) -> None:
        self.settings = dataclasses.replace(self.settings, cap_pixels_per_frame=value)

    @property
    def max_video_tokens(self) -> int | None:
        return self.settings.max_video_tokens

    @max_video_tokens.setter
    def max_video_tokens(self, value: int | None) -> None:
        self.settings = dataclasses.replace(self.settings, max_video_tokens=value)

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        options = resolve_call_options(self.settings, kwargs)
        arrays = batched_uint8_videos(videos, options["do_convert_rgb"])
        metadata = make_batched_metadata(arrays, video_metadata=options["video_metadata"])
        all_patches, grids = [], []
        for video in arrays:
            num_frames, height, width = video.shape[:3]
            if options["do_resize"]:
                height, width = qwen_frame_height_width(self.settings, height, width, num_frames, options)
                video = resize_video(video, height, width, options["resample"])
            pixels = rescale_and_normalize(video, options["do_rescale"], options["rescale_factor"],
                                           options["do_normalize"], options["image_mean"], options["image_std"])
            patches, grid_t, grid_h, grid_w = patchify(pixels, options["patch_size"], options["merge_size"],
                                                       options["temporal_patch_size"])
            all_patches.append(patches)
            grids.append([grid_t, grid_h, grid_w])
        data: dict[str, Any] = {
            "pixel_values_videos": torch.from_numpy(np.concatenate(all_patches)),
            "video_grid_thw": torch.tensor(grids),
        }
        if options["device"] is not None:
            data = {key: value.to(options["device"]) for key, value in data.items()}
        result = BatchFeature(data=data, tensor_type=options["return_tensors"])
        if options["return_metadata"]:
            result["video_metadata"] = metadata
        return result

    def _merge_and_standardize_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """The options of a call with `kwargs`, the rest from the settings: what the stock
        processor's method of this name returns. transformers 5.25's
        ``Qwen2VLProcessor._get_num_multimodal_tokens`` (and Qwen2.5-VL's) calls it on its
        video processor before ``get_num_of_video_patches``; 5.23 and 5.24 do not."""
        return resolve_call_options(self.settings, kwargs)

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int,
                                 videos_kwargs: dict[str, Any] | None = None) -> int:
        """``Qwen2VLVideoProcessor.get_num_of_video_patches``: the patches of a video of this size
        (its ``<|video_pad|>`` count is this over ``merge_size ** 2``)."""
        videos_kwargs = videos_kwargs or {}
        size = videos_kwargs.get("size", None) or self.size
        patch_size = videos_kwargs.get("patch_size", None) or self.patch_size
        merge_size = videos_kwargs.get("merge_size", None) or self.merge_size
        temporal_patch_size = videos_kwargs.get("temporal_patch_size", None) or self.temporal_patch_size
        factor = patch_size * merge_size
        # As the stock method: the uncapped per-frame limit.
        resized_height, resized_width = smart_resize(height, width, factor, min_pixels=size["shortest_edge"],
                                                     max_pixels=size["longest_edge"])
        grid_h, grid_w = resized_height // patch_size, resized_width // patch_size
        grid_t = (num_frames + -num_frames % temporal_patch_size) // temporal_patch_size
        return grid_t * grid_h * grid_w
