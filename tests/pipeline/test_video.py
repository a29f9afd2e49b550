"""Video decoding: sampled frames against a sequential decode of clips with numbered frames.

Each generated frame shows its index as a bit pattern (black / white blocks that
survive lossy coding), so a decoded frame says which one it is; the reference is
PyAV decoding every frame in order, independent of ``pipeline.video``.
"""

from __future__ import annotations

import functools
import io
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pipeline.video as video
from pipeline.media import MediaError
from pipeline.stages import pack_frames
from pipeline.video import FrameSampling, decode_video
from pipeline.video_sampling import centre_indices, round_down_to_multiple, target_times

SIZE = (64, 32)
BITS = 16  # 2 rows of 8 blocks in the top half of a frame


def numbered_frame(index: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    width, height = size
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    block_width, block_height = width // 8, height // 4
    for bit in range(BITS):
        row, column = divmod(bit, 8)
        level = 255 if (index >> bit) & 1 else 0
        pixels[row * block_height:(row + 1) * block_height,
               column * block_width:(column + 1) * block_width] = level
    return pixels


def frame_number(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    height, width = pixels.shape
    block_width, block_height = width // 8, height // 4
    number = 0
    for bit in range(BITS):
        row, column = divmod(bit, 8)
        inner = pixels[row * block_height + block_height // 4:(row + 1) * block_height - block_height // 4,
                       column * block_width + block_width // 4:(column + 1) * block_width - block_width // 4]
        number |= int(inner.mean() > 128) << bit
    return number


@functools.cache
def encode_video(num_frames: int, container_format: str = "mp4", codec: str = "libx264",
                 fps: int = 8, size: tuple[int, int] = SIZE, rotation: int = 0) -> bytes:
    """A clip whose frame ``i`` shows ``i``; ``container_format="h264"`` is a raw stream
    (no container: no duration anywhere)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # A keyframe every 4 frames, so seeking matters.
        stream.options = {"g": "4", "crf": "0", "preset": "ultrafast"} if codec == "libx264" \
            else {"g": "4"}
        if codec != "libx264":
            stream.bit_rate = 4_000_000
        if rotation:
            stream.set_display_rotation(rotation)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index, size), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def sequential_reference(data: bytes) -> tuple[list[float], list[Image.Image]]:
    """Every frame, in order, with its presentation time from the first one (PyAV alone)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(container.streams.video[0]))
    images = [frame.to_image() for frame in frames]
    if frames[0].pts is None:  # a raw stream: frames follow each other by their durations
        times = [index * float(frames[0].duration * frames[0].time_base) for index in range(len(frames))]
    else:
        times = [float((frame.pts - frames[0].pts) * frame.time_base) for frame in frames]
    return times, images


def expected_frames(times: list[float], duration: float, count: int) -> list[int]:
    """The frames on screen at the centres of `count` segments, each once."""
    chosen: list[int] = []
    for k in range(count):
        target = duration * (k + 0.5) / count
        on_screen = max(index for index, time in enumerate(times) if time <= target + 1e-9)
        if on_screen not in chosen:
            chosen.append(on_screen)
    return chosen


CLIPS = [("mp4", "libx264"), ("mpegts", "libx264"), ("mpegts", "mpeg2video"), ("h264", "libx264")]
FPS = 8


# ------------------------------------------------------------------ sampling arithmetic


@settings(max_examples=200, deadline=None)
@given(duration=st.floats(0.01, 20_000), fps=st.floats(0.01, 30), max_frames=st.integers(1, 128),
       multiple=st.integers(1, 4))
def test_fps_sampling_counts_floor_duration_times_fps_capped_and_rounded(duration, fps, max_frames,
                                                                         multiple):
    count = FrameSampling(num_frames=None, fps=fps, max_frames=max_frames,
                          frame_multiple=multiple).frame_count(duration)
    uncapped = max(1, min(math.floor(duration * fps), max_frames))
    assert count % multiple == 0 and count >= multiple
    assert count == max(multiple, uncapped - uncapped % multiple)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 300), duration=st.floats(0.01, 1e5))
def test_targets_are_the_segment_centres(count, duration):
    targets = target_times(count, duration)
    segment = duration / count
    assert len(targets) == count
    for index, target in enumerate(targets):
        assert index * segment < target < (index + 1) * segment
        assert math.isclose(target - index * segment, segment / 2, rel_tol=1e-9)


@given(count=st.integers(1, 200), wanted=st.integers(1, 200))
def test_centre_indices_are_distinct_and_evenly_spread(count, wanted):
    indices = centre_indices(count, wanted)
    assert len(indices) == min(count, wanted) and indices == sorted(set(indices))
    if wanted < count:
        assert all(abs(index - (k + 0.5) * count / wanted) < 1 for k, index in enumerate(indices))


def test_round_down_to_multiple_keeps_a_count_under_one_multiple():
    assert [round_down_to_multiple(count, 2) for count in range(1, 7)] == [1, 2, 2, 4, 4, 6]
    assert FrameSampling(num_frames=1, frame_multiple=2).frame_count(10.0) == 2


@pytest.mark.parametrize("fields", [
    {"num_frames": None}, {"num_frames": 4, "fps": 1.0}, {"num_frames": 0},
    {"num_frames": None, "fps": -1.0}, {"max_frames": 0}, {"frame_multiple": 0},
])
def test_bad_samplings_are_value_errors(fields):
    with pytest.raises(ValueError):
        FrameSampling(**fields)


# ------------------------------------------------------------------ chosen frames


SAMPLINGS = [
    FrameSampling(num_frames=8),
    FrameSampling(num_frames=5),
    FrameSampling(num_frames=7, frame_multiple=2),
    FrameSampling(num_frames=None, fps=0.5, max_frames=64),
    FrameSampling(num_frames=None, fps=2.0, max_frames=9, frame_multiple=2),
]


def sampled_count(sampling: FrameSampling, duration: float) -> int:
    if sampling.num_frames is not None:
        count = sampling.num_frames
    else:
        count = max(1, min(math.floor(duration * sampling.fps), sampling.max_frames))
    return max(sampling.frame_multiple, count - count % sampling.frame_multiple)


@pytest.mark.parametrize(("container_format", "codec"), CLIPS)
@pytest.mark.parametrize("num_frames", [24, 240])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=repr)
def test_chosen_frames_are_the_ones_a_sequential_decode_has_on_screen(container_format, codec,
                                                                       num_frames, sampling):
    data = encode_video(num_frames, container_format, codec)
    times, images = sequential_reference(data)
    assert [frame_number(image) for image in images] == list(range(num_frames))  # the clip is sound
    assert times == pytest.approx([index / FPS for index in range(num_frames)])
    duration = num_frames / FPS
    wanted = expected_frames(times, duration, sampled_count(sampling, duration))

    decoded = decode_video(data, sampling)

    assert [frame_number(frame) for frame in decoded.frames] == wanted
    assert all(frame.mode == "RGB" and frame.size == SIZE for frame in decoded.frames)
    for frame, index in zip(decoded.frames, wanted):
        assert np.array_equal(np.asarray(frame), np.asarray(images[index]))
    assert decoded.timestamps == pytest.approx([times[index] for index in wanted])
    assert decoded.duration == pytest.approx(duration)
    assert decoded.sampled_fps == pytest.approx(len(wanted) / duration)


@pytest.mark.parametrize(("container_format", "codec"), CLIPS)
def test_a_clip_shorter_than_the_sample_gives_each_frame_once_then_rounds(container_format, codec):
    data = encode_video(5, container_format, codec)
    decoded = decode_video(data, FrameSampling(num_frames=8))
    assert [frame_number(frame) for frame in decoded.frames] == [0, 1, 2, 3, 4]
    assert decoded.timestamps == pytest.approx([index / FPS for index in range(5)])
    paired = decode_video(data, FrameSampling(num_frames=8, frame_multiple=2))
    # 5 distinct frames round down to 4, spread over the 5: segment centres of 4.
    assert [frame_number(frame) for frame in paired.frames] == [0, 1, 3, 4]
    single = decode_video(encode_video(1, container_format, codec),
                          FrameSampling(num_frames=4, frame_multiple=2))
    assert [frame_number(frame) for frame in single.frames] == [0]  # no multiple to round to


def test_timestamps_count_from_the_stream_start_even_when_it_is_not_zero():
    data = encode_video(24, "mpegts", "mpeg2video")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base)
        first_pts = [float(frame.pts * frame.time_base) for frame in container.decode(stream)]
    assert start > 0 and first_pts[0] == pytest.approx(start)  # the TS muxer's offset
    decoded = decode_video(data, FrameSampling(num_frames=4))
    assert decoded.timestamps == pytest.approx([first_pts[i] - start for i in (3, 9, 15, 21)])
    assert [frame_number(frame) for frame in decoded.frames] == [3, 9, 15, 21]


def test_mp4_is_read_by_seeking_and_mpeg_ts_falls_back_to_one_pass():
    # MPEG-TS seeks land after their target or on nothing: on these clips the old decoder
    # gave 5 wrong frames of 8 (24 frames) and 8 wrong ones (240); mp4 seeks are exact.
    assert not decode_video(encode_video(240), FrameSampling(num_frames=8)).read_sequentially
    for num_frames in (24, 240):
        data = encode_video(num_frames, "mpegts", "libx264")
        decoded = decode_video(data, FrameSampling(num_frames=8))
        assert decoded.read_sequentially
        times, _ = sequential_reference(data)
        assert [frame_number(frame) for frame in decoded.frames] == \
            expected_frames(times, num_frames / FPS, 8)


def test_a_path_cell_is_read(tmp_path: Path):
    (tmp_path / "clip.mp4").write_bytes(encode_video(24))
    decoded = decode_video({"bytes": None, "path": "clip.mp4"}, FrameSampling(num_frames=4),
                           base_dir=str(tmp_path))
    assert [frame_number(frame) for frame in decoded.frames] == [3, 9, 15, 21]


# ------------------------------------------------------------------ rotation and size


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_the_display_matrix_rotation_is_applied(rotation):
    data = encode_video(12, rotation=rotation)
    with av.open(io.BytesIO(data)) as container:
        first = next(container.decode(container.streams.video[0]))
        assert first.rotation % 360 == rotation % 360  # the clip carries it, as a phone's does
    _, images = sequential_reference(data)
    decoded = decode_video(data, FrameSampling(num_frames=3))
    for frame, index in zip(decoded.frames, (2, 6, 10)):
        # np.rot90 turns counter-clockwise, as the display matrix's angle counts.
        assert np.array_equal(np.asarray(frame), np.rot90(np.asarray(images[index]), rotation // 90))


def processor_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # The video processors' resize (checked against torchvision's in test_video_parity).
    from pipeline.video_processing.frames import resize_video

    return Image.fromarray(resize_video(np.asarray(image)[None], size[1], size[0],
                                        Image.Resampling.BICUBIC)[0])


def test_frame_size_resizes_the_upright_rgb_frames_bicubically():
    data = encode_video(12, rotation=90)
    _, images = sequential_reference(data)
    calls = []

    def half(width: int, height: int, num_frames: int) -> tuple[int, int]:
        calls.append((width, height, num_frames))
        return width // 2, height // 2

    decoded = decode_video(data, FrameSampling(num_frames=3), frame_size=half)
    assert calls == [(SIZE[1], SIZE[0], 3)]  # upright size, once, from the first frame
    for frame, index in zip(decoded.frames, (2, 6, 10)):
        upright = images[index].transpose(Image.Transpose.ROTATE_90)
        expected = processor_resize(upright, (SIZE[1] // 2, SIZE[0] // 2))
        assert np.array_equal(np.asarray(frame), np.asarray(expected))


def test_frames_that_change_size_mid_clip_take_the_first_frame_s_size_when_resizing():
    # Raw H.264 streams concatenate: the second's parameter sets change the frame size.
    small = (32, 16)
    data = encode_video(6, "h264") + encode_video(6, "h264", size=small)
    with av.open(io.BytesIO(data)) as container:
        reference = [frame.to_image() for frame in container.decode(container.streams.video[0])]
    assert [image.size for image in reference] == [SIZE] * 6 + [small] * 6

    unsized = decode_video(data, FrameSampling(num_frames=4))
    assert [frame.size for frame in unsized.frames] == [SIZE, SIZE, small, small]
    with pytest.raises(MediaError, match="change size mid-clip: frame 0 is 64x32, frame 2 is 32x16"):
        pack_frames(unsized.frames)

    sized = decode_video(data, FrameSampling(num_frames=4), frame_size=lambda w, h, n: (w, h))
    assert [frame.size for frame in sized.frames] == [SIZE] * 4
    for frame, index in zip(sized.frames, (1, 4, 7, 10)):
        expected = processor_resize(reference[index], SIZE) \
            if reference[index].size != SIZE else reference[index]
        assert np.array_equal(np.asarray(frame), np.asarray(expected))
    assert [frame_number(frame) for frame in sized.frames] == [1, 4, 1, 4]  # 2nd clip restarts at 0


# ------------------------------------------------------------------ memory


MEMORY_PROBE = """
import io, sys
import av
from pipeline.video import FrameSampling, decode_video

def peak_rise_mib(work):
    # Linux: writing 5 to clear_refs resets the peak (VmHWM) to the resident size now.
    open("/proc/self/clear_refs", "w").write("5")
    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status")
                    if line.startswith(field))
    now = kib("VmRSS")
    result = work()
    return result, (kib("VmHWM") - now) / 1024

data = open(sys.argv[1], "rb").read()
def hold_all():
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(container.streams.video[0])]
decoded, sampled_mib = peak_rise_mib(lambda: decode_video(data, FrameSampling(num_frames=8)))
held, held_mib = peak_rise_mib(hold_all)
print(len(decoded.frames), len(held), sampled_mib, held_mib)
"""


def test_a_clip_without_duration_streams_holding_only_the_sampled_frames(tmp_path: Path):
    size, num_frames = (320, 240), 600
    path = tmp_path / "long.h264"
    path.write_bytes(encode_video(num_frames, "h264", size=size))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    sampled, held, sampled_peak_mib, held_peak_mib = result.stdout.split()
    all_frames_mib = num_frames * size[0] * size[1] * 3 / 2**20  # 132 MiB of RGB
    assert (int(sampled), int(held)) == (8, num_frames)
    assert float(held_peak_mib) > 0.8 * all_frames_mib  # the probe sees frames held
    assert float(sampled_peak_mib) < 0.15 * all_frames_mib


# ------------------------------------------------------------------ bad videos


def audio_only_clip() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def truncated_faststart_mp4(tmp_path: Path) -> bytes:
    # The index up front, the frames cut off: opens, then fails while decoding.
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(24):
            noise = rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: encode_video(24)[:300], "not a video PyAV can open"),
    (lambda tmp: encode_video(24)[:-300], "truncated"),  # the index at the end, cut
    (truncated_faststart_mp4, r"cannot decode the video's data \(truncated or corrupt"),
    (lambda tmp: b"", "zero bytes"),
    (lambda tmp: audio_only_clip(), r"no video stream \(only audio\)"),
    (lambda tmp: encode_video(24).replace(b"avc1", b"zzzz"), "codec is one PyAV has no decoder for"),
    (lambda tmp: bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
     "not a video PyAV can open"),
    (lambda tmp: None, r"empty \(null\)"),
])
def test_bad_videos_are_media_errors_saying_why(make, message, tmp_path: Path):
    with pytest.raises(MediaError, match=message):
        decode_video(make(tmp_path), FrameSampling(num_frames=4))


def test_a_resolution_over_the_cap_is_refused_from_the_header(monkeypatch):
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", SIZE[0] * SIZE[1] - 1)
    for container_format in ("mp4", "h264"):
        with pytest.raises(MediaError, match=r"64x32 in its header, over the 2047-pixel cap"):
            decode_video(encode_video(24, container_format), FrameSampling(num_frames=4))


@pytest.mark.parametrize("container_format", ["mp4", "mpegts", "h264"])
def test_a_duration_over_the_cap_is_refused(monkeypatch, container_format):
    monkeypatch.setattr(video, "MAX_VIDEO_SECONDS", 2)
    decode_video(encode_video(16, container_format), FrameSampling(num_frames=4))  # 2 s: at the cap
    with pytest.raises(MediaError, match=r"lasts 3 s, over the 2 s cap"):
        decode_video(encode_video(24, container_format), FrameSampling(num_frames=4))


def test_too_many_frames_without_a_duration_is_refused(monkeypatch):
    data = encode_video(24, "h264")
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 24)
    assert len(decode_video(data, FrameSampling(num_frames=4)).frames) == 4
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 23)
    with pytest.raises(MediaError, match="more than 23 frames and no duration"):
        decode_video(data, FrameSampling(num_frames=4))
