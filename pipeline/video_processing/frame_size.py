"""The size a video processor resizes a clip's frames to, for the decoder.

Decoding straight to this size (one downscale) makes the processor's own resize an
identity: Qwen's ``smart_resize`` keeps a size that is already a multiple of its factor
and within its pixel limits, a shortest-edge resize keeps a frame whose short side is
already that edge, and a fixed size is fixed. NeXT-Video's centre crop comes after the
resize and is not part of this size.
"""

from __future__ import annotations

from pipeline.video_processing.frames import resized_height_width
from pipeline.video_processing.qwen_vl import qwen_frame_height_width
from pipeline.video_processing.settings import VideoProcessingSettings


def frame_size(settings: VideoProcessingSettings, width: int, height: int, num_frames: int) -> tuple[int, int]:
    """(width, height) the processor would resize ``num_frames`` frames of ``width`` x ``height`` to."""
    if width < 1 or height < 1 or num_frames < 1:
        raise ValueError(f"not a video size: {num_frames} frames of {width}x{height}")
    if not settings.do_resize:
        return width, height
    if settings.is_qwen:
        new_height, new_width = qwen_frame_height_width(settings, height, width, num_frames)
    else:
        new_height, new_width = resized_height_width(height, width, settings.size)
    return new_width, new_height
