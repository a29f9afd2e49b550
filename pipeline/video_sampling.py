"""Which moments of a clip to sample: the pure arithmetic behind ``pipeline.video``.

Two conventions, both from the models this pipeline serves:

- Uniform sampling takes the frame on screen at the centre of each of ``n`` equal
  time segments, ``t_k = duration * (k + 0.5) / n``, the way LLaVA-style video
  evaluation samples clips (LLaVA-NeXT-Video, LLaVA-OneVision). Sampling by
  frame rate (Qwen2-VL's ``fps`` video option) picks ``n = floor(duration * fps)``
  frames, capped at ``max_frames`` and at least one, at the same centres.
- Qwen2-VL and Qwen2.5-VL merge frames in pairs (``temporal_patch_size = 2``,
  the processors' ``FRAME_FACTOR``), so the count is rounded down to a
  ``frame_multiple`` — never below one multiple, which a clip with fewer frames
  than that cannot give (it keeps what it has; the processor pads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameSampling:
    """How many frames to take from a clip; exactly one of ``num_frames`` / ``fps``."""

    num_frames: int | None = 8  # uniform: this many frames, at the centres of equal segments
    fps: float | None = None  # or: this many frames per second of video ...
    max_frames: int = 64  # ... capped at this many (fps mode only)
    frame_multiple: int = 1  # the count is rounded down to a multiple of this

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("set exactly one of num_frames and fps, got "
                             f"num_frames={self.num_frames!r}, fps={self.fps!r}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.frame_multiple < 1:
            raise ValueError(f"frame_multiple must be >= 1, got {self.frame_multiple}")

    def frame_count(self, duration: float) -> int:
        """Frames to sample from a clip lasting `duration` seconds (before meeting its frames)."""
        if self.num_frames is not None:
            count = self.num_frames
        else:
            count = max(1, min(math.floor(duration * self.fps), self.max_frames))
        return max(self.frame_multiple, round_down_to_multiple(count, self.frame_multiple))


def round_down_to_multiple(count: int, multiple: int) -> int:
    """`count` rounded down to a multiple of `multiple`; a count under one multiple stays."""
    return count if count < multiple else count // multiple * multiple


def target_times(count: int, duration: float) -> list[float]:
    """The centres of `count` equal segments of ``[0, duration)``, in seconds."""
    return [duration * (index + 0.5) / count for index in range(count)]


def centre_indices(count: int, wanted: int) -> list[int]:
    """`wanted` of ``range(count)`` at the centres of equal segments (all when fewer)."""
    if wanted >= count:
        return list(range(count))
    return [int((index + 0.5) * count / wanted) for index in range(wanted)]
