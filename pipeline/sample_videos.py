"""The small video sample shipped as ``data/sample/videos.parquet`` (``python -m pipeline.sample_data``).

``id`` and ``video`` (encoded bytes): short clips of a coloured square moving over a
gradient, of different lengths, frame rates, sizes (a portrait one among them),
codecs and containers: H.264 in MP4 and in MPEG-TS (whose seeking PyAV cannot trust),
VP9 in WebM and MPEG-4 Part 2 in Matroska. So a batch of them is ragged in every way
a real video dataset is. Two cells are broken as real ones are: a truncated file and
an audio-only file. Drawn from a fixed seed; libx264 does not give the same bytes on
every run (the test compares what the clips hold: codec, size, frame count).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

NUM_CLIPS = 20
# (container format, codec) pairs the clips cycle through.
FORMATS = (("mp4", "libx264"), ("mpegts", "libx264"), ("webm", "libvpx-vp9"),
           ("matroska", "mpeg4"))
SIZES = ((96, 64), (128, 72), (64, 96), (160, 90))
FRAME_RATES = (8, 12, 25, 30)
# Row positions of the broken cells, and what is wrong with them.
BROKEN_CLIPS = {5: "truncated", 13: "audio_only"}


def moving_square_frames(rng: np.random.Generator, width: int, height: int,
                         count: int) -> list[np.ndarray]:
    """`count` RGB frames: a square crossing a vertical gradient, one colour per clip."""
    top, bottom, colour = rng.integers(0, 256, size=(3, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    side = max(4, min(width, height) // 3)
    frames = []
    for index in range(count):
        frame = background.copy()
        left = int((width - side) * index / max(count - 1, 1))
        upper = int((height - side) * (0.5 + 0.4 * np.sin(index / 3)))
        frame[upper:upper + side, left:left + side] = colour
        frames.append(frame)
    return frames


def encode_clip(frames: list[np.ndarray], fps: int, container_format: str, codec: str) -> bytes:
    """The frames encoded as one video file in memory."""
    buffer = io.BytesIO()
    # bitexact: no muxer dates or random segment ids in the file.
    with av.open(buffer, mode="w", format=container_format,
                 container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps, options={"flags": "+bitexact"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"g": str(fps)}  # a keyframe a second: seeking has work to do
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def audio_only_clip(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """An M4A-style file holding a sine tone and no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate)
        chunk = 1024
        for start in range(0, len(samples), chunk):
            piece = (samples[start:start + chunk] * 0.3).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video_rows(rng: np.random.Generator) -> list[dict]:
    """The rows of ``videos.parquet``: ``id`` and ``video`` bytes."""
    rows = []
    for index in range(NUM_CLIPS):
        container_format, codec = FORMATS[index % len(FORMATS)]
        width, height = SIZES[index % len(SIZES)]
        fps = FRAME_RATES[(index // 2) % len(FRAME_RATES)]
        seconds = 1.0 + (index * 7 % 5)  # 1 to 5 s
        frames = moving_square_frames(rng, width, height, int(seconds * fps))
        data = encode_clip(frames, fps, container_format, codec)
        damage = BROKEN_CLIPS.get(index)
        if damage == "truncated":
            data = data[: len(data) // 5]
        elif damage == "audio_only":
            data = audio_only_clip()
        rows.append({"id": f"clip-{index:04d}", "video": data})
    return rows
