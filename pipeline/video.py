"""Decode a video cell into the RGB frames a clip is sampled at (PyAV).

Which moments are sampled is ``pipeline.video_sampling``'s arithmetic (LLaVA-style
segment centres, or a frame rate; Qwen2-VL's frame factor of 2): at each target
time ``t_k`` the chosen frame is the one on screen, the last whose presentation
time is ``<= t_k``. Timestamps count from the stream's first presentation time.

Reading is two-speed. With a duration in the header, each far target is reached by
seeking to the keyframe before it and decoding forward. Seeking can fail silently
(MPEG-TS seeks by byte position and lands after the target, or on nothing), so a
seek that lands after its target, yields nothing, or gives fewer distinct frames
than the clip should hold is abandoned for one sequential pass. Without a duration
(a raw H.264 stream) one demux pass measures the clip, then one decode pass keeps
only the chosen frames: memory holds the sampled frames, never the whole clip.

Frames are turned upright by their display matrix (``VideoFrame.rotation``, what
phones record) and resized when ``frame_size`` asks for another size, with the video
processors' own resize (``pipeline.video_processing.frames.resize_video``: torch's
antialiased bicubic, as torchvision does it), so that resizing here and not again in
the processor gives the pixels the stock processor would make; every failure is a ``pipeline.media.MediaError`` saying what was wrong.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.media import MediaError, MediaReader, read_cell_bytes
from pipeline.video_sampling import (
    FrameSampling,
    centre_indices,
    round_down_to_multiple,
    target_times,
)

__all__ = ["DecodedVideo", "FrameSampling", "FrameSize", "decode_video",
           "MAX_VIDEO_FRAMES", "MAX_VIDEO_PIXELS", "MAX_VIDEO_SECONDS"]

# Caps on one clip, so that one row cannot exhaust a decode worker.
MAX_VIDEO_SECONDS = 4 * 3600
MAX_VIDEO_FRAMES = 1_000_000  # frames counted in a clip whose header has no duration
MAX_VIDEO_PIXELS = 8192 * 8192  # width * height of a frame, checked from the header first

# A target this far (seconds) past the decoder's position is reached by seeking;
# nearer ones by decoding on, which is cheaper than re-decoding from a keyframe.
SEEK_AHEAD_SECONDS = 2.0
# Presentation times are rationals turned into floats: compare with this slack.
_TIME_SLACK = 1e-6
_PREVIEW_BYTES = 16

FrameSize = Callable[[int, int, int], tuple[int, int]]  # (width, height, num_frames) -> size


@dataclass
class DecodedVideo:
    """The sampled frames of a clip and when they are shown."""

    frames: list[Image.Image]  # RGB, rotation applied, resized by frame_size when given
    timestamps: list[float]  # presentation time of each frame, seconds from the stream's start
    duration: float  # seconds, from the header or measured when absent
    sampled_fps: float  # len(frames) / duration (Qwen2.5-VL's second_per_grid_ts needs it)
    read_sequentially: bool  # one pass from the start (no duration, or seeking failed)


@dataclass
class _Timed:
    time: float  # seconds from the stream's start
    frame: Any  # av.VideoFrame


def decode_video(
    cell: Any,
    sampling: FrameSampling,
    *,
    frame_size: FrameSize | None = None,
    base_dir: str | None = None,
    reader: MediaReader | None = None,
) -> DecodedVideo:
    """The frames of the video in `cell` (bytes, ``{bytes, path}`` struct, path / URI) that
    `sampling` picks; `frame_size` gives the size to resize them to, from the first one's."""
    data = read_cell_bytes(cell, base_dir=base_dir, reader=reader)
    import av  # imported here: image-only jobs never need PyAV

    try:
        return _decode(data, sampling, frame_size)
    except MediaError:
        raise
    except av.error.FFmpegError as error:
        raise MediaError(f"cannot decode the video's data (truncated or corrupt?): {error}") from None
    except Exception as error:
        raise MediaError(f"cannot decode video ({len(data)} bytes, starting "
                         f"{data[:_PREVIEW_BYTES]!r}): {type(error).__name__}: {error}") from None


def _decode(data: bytes, sampling: FrameSampling, frame_size: FrameSize | None) -> DecodedVideo:
    with _open(data) as container:
        stream = _video_stream(container)
        header_duration = _header_duration(container, stream)
        duration = header_duration or _measured_duration(container, stream)
        if duration <= 0:
            raise MediaError("the video has no decodable frames")
        _check_duration(duration)
        picks = None if header_duration is None else \
            _pick_by_seeking(container, stream, sampling, duration)
        if picks is not None:
            return _finish(picks, duration, sampling, frame_size, read_sequentially=False)
    with _open(data) as container:  # from the start again: raw streams cannot seek back
        stream = _video_stream(container)
        targets = target_times(sampling.frame_count(duration), duration)
        picks = _pick_in_order(_timed_frames(container, stream), targets)
        return _finish(picks, duration, sampling, frame_size, read_sequentially=True)


def _open(data: bytes) -> Any:
    import av

    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as error:
        raise MediaError(f"not a video PyAV can open ({len(data)} bytes, starting "
                         f"{data[:_PREVIEW_BYTES]!r}): {error}") from None


def _video_stream(container: Any) -> Any:
    if not container.streams:
        raise MediaError("the video cell holds no streams (a truncated file, or not a video?)")
    if not container.streams.video:
        held = ", ".join(sorted({stream.type for stream in container.streams}))
        raise MediaError(f"the video cell holds no video stream (only {held})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise MediaError("the video stream's codec is one PyAV has no decoder for")
    width, height = stream.codec_context.width, stream.codec_context.height
    _check_pixels(width, height, "in its header")
    return stream


def _check_pixels(width: int, height: int, where: str) -> None:
    if width * height > MAX_VIDEO_PIXELS:
        raise MediaError(f"the video's frames are {width}x{height} {where}, over the "
                         f"{MAX_VIDEO_PIXELS}-pixel cap")


def _check_duration(duration: float) -> None:
    if duration > MAX_VIDEO_SECONDS:
        raise MediaError(f"the video lasts {duration:.0f} s, over the {MAX_VIDEO_SECONDS} s cap")


def _header_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        import av

        return container.duration / av.time_base
    return None


def _measured_duration(container: Any, stream: Any) -> float:
    """Seconds from the stream's start to the last packet's end (demuxing only)."""
    clock = _Clock(stream)
    count, end = 0, 0.0
    for packet in container.demux(stream):
        if not packet.size:
            continue
        count += 1
        if count > MAX_VIDEO_FRAMES:
            raise MediaError(f"the video has more than {MAX_VIDEO_FRAMES} frames and no "
                             "duration in its header: too long to sample safely")
        end = max(end, sum(clock.time_and_length(packet)))
    return end


class _Clock:
    """Presentation times in seconds from the stream's start; a raw stream's packets and
    frames carry no timestamps, so they are counted on by their durations (or the rate)."""

    def __init__(self, stream: Any) -> None:
        self.time_base = float(stream.time_base)
        self.start = stream.start_time * self.time_base if stream.start_time is not None else 0.0
        rate = stream.guessed_rate or stream.average_rate or 25
        self.period = 1.0 / float(rate)
        self.next = 0.0

    def time_and_length(self, item: Any) -> tuple[float, float]:
        length = item.duration * self.time_base if item.duration else self.period
        time = item.pts * self.time_base - self.start if item.pts is not None else self.next
        self.next = time + length
        return time, length


def _timed_frames(container: Any, stream: Any) -> Iterator[_Timed]:
    clock = _Clock(stream)
    for frame in container.decode(stream):
        _check_pixels(frame.width, frame.height, "in a decoded frame")
        yield _Timed(clock.time_and_length(frame)[0], frame)


def _pick_in_order(frames: Iterator[_Timed], targets: list[float]) -> list[_Timed]:
    """The frame on screen at each target, from frames in presentation order; one pass,
    holding only the picks and the frame on screen now."""
    picks: list[_Timed] = []
    on_screen: _Timed | None = None
    for timed in frames:
        while len(picks) < len(targets) and targets[len(picks)] + _TIME_SLACK < timed.time:
            # Before the first frame nothing is on screen yet: the first frame stands in.
            picks.append(on_screen or timed)
        if len(picks) == len(targets):
            break
        on_screen = timed
    if on_screen is not None:
        picks.extend(on_screen for _ in range(len(targets) - len(picks)))
    return picks


def _pick_by_seeking(container: Any, stream: Any, sampling: FrameSampling,
                     duration: float) -> list[_Timed] | None:
    """The frame on screen at each target, seeking to far ones; None when a seek failed."""
    targets = target_times(sampling.frame_count(duration), duration)
    clock = _Clock(stream)
    picks: list[_Timed] = []
    frames: Iterator[_Timed] | None = None
    on_screen: _Timed | None = None
    upcoming: _Timed | None = None  # decoded, not yet on screen at the targets so far
    for target in targets:
        if frames is None or target - on_screen.time > SEEK_AHEAD_SECONDS:
            container.seek(int((clock.start + target) / clock.time_base), stream=stream,
                           backward=True)
            frames = _timed_frames(container, stream)
            on_screen, upcoming = next(frames, None), None
            if on_screen is None or on_screen.time > target + _TIME_SLACK:
                return None  # landed on nothing, or after the target
        while True:
            upcoming = upcoming or next(frames, None)
            if upcoming is None or upcoming.time > target + _TIME_SLACK:
                break
            on_screen, upcoming = upcoming, None
        picks.append(on_screen)
    distinct = len({pick.time for pick in picks})
    # Fewer distinct frames than targets is right only for a clip with fewer frames.
    rate = stream.average_rate or stream.guessed_rate
    frame_count = stream.frames or (round(duration * float(rate)) if rate else len(targets))
    return picks if distinct >= min(len(targets), frame_count) else None


def _finish(picks: list[_Timed], duration: float, sampling: FrameSampling,
            frame_size: FrameSize | None, *, read_sequentially: bool) -> DecodedVideo:
    distinct: list[_Timed] = []
    for pick in picks:  # targets on the same frame keep it once
        if not distinct or abs(pick.time - distinct[-1].time) > _TIME_SLACK:
            distinct.append(pick)
    if not distinct:
        raise MediaError("the video has no decodable frames")
    wanted = round_down_to_multiple(len(distinct), sampling.frame_multiple)
    kept = [distinct[index] for index in centre_indices(len(distinct), wanted)]
    frames = [upright_rgb(pick.frame) for pick in kept]
    if frame_size is not None:
        size = tuple(frame_size(*frames[0].size, len(frames)))
        frames = [frame if frame.size == size else resized(frame, size) for frame in frames]
    return DecodedVideo(frames=frames, timestamps=[pick.time for pick in kept],
                        duration=duration, sampled_fps=len(frames) / duration,
                        read_sequentially=read_sequentially)


def upright_rgb(frame: Any) -> Image.Image:
    """`frame` as an RGB image turned by its display matrix (counter-clockwise degrees)."""
    return rotate_upright(frame.to_image(), frame.rotation)


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` resized to `size` (width, height) as the video processors resize."""
    from pipeline.video_processing.frames import resize_video

    array = resize_video(np.array(image)[None], size[1], size[0], Image.Resampling.BICUBIC)
    return Image.fromarray(array[0])


def rotate_upright(image: Image.Image, rotation: int) -> Image.Image:
    """`image` turned `rotation` degrees counter-clockwise (exact for multiples of 90)."""
    if rotation % 360 == 0:
        return image
    return image.rotate(rotation, resample=Image.Resampling.BICUBIC, expand=True)
