"""Video input to uint8 frame arrays, and the pixel steps every stock video processor shares.

The steps mirror ``transformers``' ``BaseVideoProcessor`` (``video_processing_utils``) and
its ``TorchvisionBackend`` (``image_processing_backends``) with NumPy and torch's own
interpolation in place of torchvision: ``_prepare_input_videos`` (channels-last uint8,
RGB), ``resize`` (the target size from the same ``size`` dict rules, then the call
torchvision's ``resize_image`` makes: ``torch.nn.functional.interpolate`` with antialias,
bicubic on uint8 as torchvision does on CPU; PIL's bicubic differs by up to 3 levels on
noisy frames, since it rounds and clips between its two passes), ``center_crop`` (zero
padding when the crop is larger, then the same offsets) and ``rescale_and_normalize``
(fused into one float32 normalisation, as the stock one fuses it).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    ChannelDimension,
    PILImageResampling,
    get_image_size_for_max_height_width,
    infer_channel_dimension_format,
)
from transformers.video_utils import make_batched_videos

from pipeline.media import MediaError

# The resampling modes mirrored (every family's checkpoints use bicubic): torch's
# interpolation mode for each PIL resampling filter a config names.
SUPPORTED_RESAMPLING = {
    int(PILImageResampling.BILINEAR): "bilinear",
    int(PILImageResampling.BICUBIC): "bicubic",
}


def batched_uint8_videos(videos: Any, do_convert_rgb: bool | None) -> list[np.ndarray]:
    """Each video as a (frames, height, width, 3) uint8 array, batched the way the stock
    processor batches them (``make_batched_videos``: one video, or a list of them, each a
    list of PIL frames or a 4-D array)."""
    if isinstance(videos, (list, tuple)) and not videos:
        raise MediaError("no videos given")
    try:
        batched = make_batched_videos(videos)
    except (ValueError, TypeError, IndexError) as error:
        raise MediaError(f"not a video or a list of videos: {error}") from None
    return [_uint8_video(video, index, do_convert_rgb) for index, video in enumerate(batched)]


def _uint8_video(video: Any, index: int, do_convert_rgb: bool | None) -> np.ndarray:
    if hasattr(video, "numpy") and not isinstance(video, np.ndarray):
        video = video.detach().cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise MediaError(f"video {index} is a {type(video).__name__}, not frames (decode it first)")
    if video.dtype != np.uint8:
        raise MediaError(f"video {index} has {video.dtype} pixels; uint8 frames are expected")
    if video.ndim == 3:  # grayscale frames as (frames, height, width)
        video = video[..., None]
    if video.ndim != 4 or video.shape[0] == 0:
        raise MediaError(f"video {index} has shape {video.shape}; expected (frames, height, width, channels)")
    try:
        layout = infer_channel_dimension_format(video, num_channels=(1, 3))
    except ValueError:
        raise MediaError(f"video {index} has shape {video.shape}: neither RGB nor grayscale frames") from None
    if layout == ChannelDimension.FIRST:
        video = video.transpose(0, 2, 3, 1)
    if video.shape[-1] == 1:
        if not do_convert_rgb:
            raise MediaError(f"video {index} is grayscale and do_convert_rgb is off")
        video = np.repeat(video, 3, axis=-1)
    return np.ascontiguousarray(video)


def resized_height_width(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """The (height, width) ``TorchvisionBackend.resize`` gives a frame for a ``size`` dict."""
    if size.get("shortest_edge") and size.get("longest_edge"):
        return get_size_with_aspect_ratio((height, width), size["shortest_edge"], size["longest_edge"])
    if size.get("shortest_edge"):
        # get_resize_output_image_size reads only the shape of what it is given.
        shape_only = np.broadcast_to(np.uint8(0), (3, height, width))
        return get_resize_output_image_size(shape_only, size=size["shortest_edge"], default_to_square=False,
                                            input_data_format=ChannelDimension.FIRST)
    if size.get("max_height") and size.get("max_width"):
        return get_image_size_for_max_height_width((height, width), size["max_height"], size["max_width"])
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ValueError(f"size must hold 'height' and 'width', 'max_height' and 'max_width', or "
                     f"'shortest_edge'; got {size}")


def resize_video(video: np.ndarray, height: int, width: int, resample: int | None) -> np.ndarray:
    """Every frame of a (frames, height, width, 3) uint8 video resized to ``height`` x ``width``,
    as torchvision's ``resize_image`` does it on CPU: torch's own antialiased interpolation,
    on the uint8 frames where torchvision keeps them uint8, else in float32, clamped and rounded."""
    if video.shape[1:3] == (height, width):
        return video  # torchvision returns the frames untouched too
    if height < 1 or width < 1:
        raise MediaError(f"a {video.shape[2]}x{video.shape[1]} frame would be resized to {width}x{height}")
    mode = _interpolation_mode(resample)
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()
    native_uint8 = mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") \
        or platform.machine() in ("aarch64", "arm64")
    if not native_uint8:
        frames = frames.to(torch.float32)
    resized = torch.nn.functional.interpolate(frames, size=[height, width], mode=mode, align_corners=False,
                                              antialias=True)
    if not native_uint8:
        resized = resized.round_().to(torch.uint8)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def _interpolation_mode(resample: int | None) -> str:
    # TorchvisionBackend.resize defaults to bilinear when no resample is set.
    key = int(PILImageResampling.BILINEAR) if resample is None else int(resample)
    if key not in SUPPORTED_RESAMPLING:
        raise ValueError(f"resample {resample!r} is not supported without torchvision "
                         f"(supported: bilinear, bicubic)")
    return SUPPORTED_RESAMPLING[key]


def center_crop_video(video: np.ndarray, crop_size: dict[str, int]) -> np.ndarray:
    """``TorchvisionBackend.center_crop`` on (frames, height, width, 3)."""
    if crop_size.get("height") is None or crop_size.get("width") is None:
        raise ValueError(f"crop_size must have 'height' and 'width'; got {crop_size}")
    crop_height, crop_width = crop_size["height"], crop_size["width"]
    height, width = video.shape[1:3]
    if crop_width > width or crop_height > height:
        pad_top = (crop_height - height) // 2 if crop_height > height else 0
        pad_bottom = (crop_height - height + 1) // 2 if crop_height > height else 0
        pad_left = (crop_width - width) // 2 if crop_width > width else 0
        pad_right = (crop_width - width + 1) // 2 if crop_width > width else 0
        video = np.pad(video, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
        height, width = video.shape[1:3]
        if (crop_height, crop_width) == (height, width):
            return video
    top = int((height - crop_height) / 2.0)
    left = int((width - crop_width) / 2.0)
    return video[:, top:top + crop_height, left:left + crop_width]


def rescale_and_normalize(video: np.ndarray, do_rescale: bool | None, rescale_factor: float | None,
                          do_normalize: bool | None, image_mean: float | Sequence[float] | None,
                          image_std: float | Sequence[float] | None) -> np.ndarray:
    """(frames, height, width, 3) uint8 -> (frames, 3, height, width), as
    ``TorchvisionBackend.rescale_and_normalize`` computes it (float32)."""
    channels_first = video.transpose(0, 3, 1, 2)
    if do_normalize:
        mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1)
        if do_rescale:
            # Fused: (x * factor - mean) / std as (x - mean / factor) / (std / factor).
            mean = mean * np.float32(1.0 / rescale_factor)
            std = std * np.float32(1.0 / rescale_factor)
        return (channels_first.astype(np.float32) - mean) / std
    if do_rescale:
        return channels_first * np.float32(rescale_factor)
    return np.ascontiguousarray(channels_first)
