"""How a job's video cells reach its model: as a video or as frames, sampled and sized for it.

Resolved once on the driver (``plan``) from the job's ``video`` section and the
checkpoint, and handed to the decode stage, so that decoding (CPU tasks) already
samples the frame count the family needs (Qwen2-VL's temporal patches take frames in
pairs) and downscales each frame to the size the family's video processor resizes it
to: a 1080p clip then travels to the model worker as the few hundred pixels a side the
model reads, not 6 MB per frame, and the processor's own resize becomes an identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import JobError
from pipeline.families import FAMILIES, reads_native_video
from pipeline.video import FrameSampling, FrameSize


@dataclass(frozen=True)
class VideoInput:
    """What the decode stage does with a video cell."""

    native: bool  # the model reads a video; otherwise its frames as images
    sampling: FrameSampling
    frame_size: FrameSize | None = None  # the size a frame is resized to at decode


def resolve_video_input(section: Any, family: str, location: str | None = None,
                        hub_kwargs: dict[str, Any] | None = None) -> VideoInput:
    """The decode stage's video handling for the job's `section` (``spec.video``) and `family`.

    `location` (a checkpoint folder or hub id) lets frames be sized to what the
    family's video processor will use; without it frames keep their decoded size.
    """
    try:
        native = reads_native_video(section.mode, family)
    except ValueError as error:  # a family only the checkpoint named (model.family: auto)
        raise JobError(f"video.mode: native, but {error}") from None
    multiple = FAMILIES[family].video_frame_multiple if native else 1
    if section.fps is not None:
        sampling = FrameSampling(num_frames=None, fps=section.fps, max_frames=section.max_frames,
                                 frame_multiple=multiple)
    else:
        sampling = FrameSampling(num_frames=section.sampled_frames, frame_multiple=multiple)
    frame_size = None
    if native and location is not None:
        from pipeline.video_processing import load_video_settings, with_video_token_cap

        settings = load_video_settings(location, family, hub_kwargs)
        if FAMILIES[family].caps_image_tokens:
            settings = with_video_token_cap(settings, section.max_video_tokens)
        frame_size = ProcessorFrameSize(settings)
    return VideoInput(native=native, sampling=sampling, frame_size=frame_size)


@dataclass(frozen=True)
class ProcessorFrameSize:
    """The ``FrameSize`` of a video processor: what it would resize a clip's frames to
    (a picklable callable, shipped to the decode tasks)."""

    settings: Any  # pipeline.video_processing.VideoProcessingSettings

    def __call__(self, width: int, height: int, num_frames: int) -> tuple[int, int]:
        from pipeline.video_processing import frame_size

        return frame_size(self.settings, width, height, num_frames)
