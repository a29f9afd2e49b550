"""The job's ``video`` section: how a video cell is sampled and how the model reads it.

``mode``: ``native`` hands the model a video (``{"type": "video"}`` content and the
family's own video preprocessing: Qwen2-VL's temporal patches, LLaVA-NeXT-Video's and
OneVision's pooled frames); ``frames`` hands it the sampled frames as a multi-image
prompt. ``auto`` (the default) is ``native`` for the families that read video
(``pipeline.families``) and ``frames`` for the image-only ones (LLaVA-1.5, LLaVA-NeXT).

Sampling is ``num_frames`` evenly spaced frames (8 when nothing is set), or ``fps``
frames per second of video, at most ``max_frames``; ``pipeline.video`` rounds the count
to what the family needs. ``max_video_tokens`` caps one video's visual tokens where the
family's processor resizes to a pixel budget (Qwen2-VL, Qwen2.5-VL): the budget is
spread over the frames, as qwen-vl-utils does, instead of the per-image cap
(``model.max_image_tokens``) being applied to every frame.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator

from pipeline.spec_errors import field_error

DEFAULT_NUM_FRAMES = 8
# One row's frames travel through Ray's object store and one prefill: past this a job
# is more likely a typo (fps: 300) than a wish.
MAX_SAMPLED_FRAMES = 1024

VideoMode = Literal["auto", "native", "frames"]


class VideoSection(BaseModel):
    """Frame sampling and the video input mode (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: VideoMode = "auto"
    num_frames: PositiveInt | None = None
    fps: PositiveFloat | None = None
    max_frames: PositiveInt = 64  # caps fps sampling (num_frames is its own cap)
    max_video_tokens: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_sampling(self) -> VideoSection:
        if self.num_frames is not None and self.fps is not None:
            raise field_error("fps", "set either num_frames (evenly spaced) or fps "
                                     "(frames per second, at most max_frames), not both")
        for name in ("num_frames", "max_frames"):
            value = getattr(self, name)
            if value is not None and value > MAX_SAMPLED_FRAMES:
                raise field_error(name, f"at most {MAX_SAMPLED_FRAMES} frames per row, got {value}")
        return self

    @property
    def sampled_frames(self) -> int | None:
        """The uniform frame count (None when sampling by ``fps``)."""
        if self.fps is not None:
            return None
        return self.num_frames if self.num_frames is not None else DEFAULT_NUM_FRAMES
