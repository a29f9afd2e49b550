"""Media decoding: every image cell shape, broken cells, the decode stage (videos: test_video.py).

References are independent of ``pipeline.media``: pixels come from the PIL
image that was encoded, and a video's frames are identified by the grey level
each frame was drawn with.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.media import MediaError, MediaReader, decode_image, read_cell_bytes
from pipeline.stages import DecodeStage, pack_frames, unpack_frames
from pipeline.video import FrameSampling, decode_video
from pipeline.video_input import VideoInput


def picture(seed: int, size: tuple[int, int] = (40, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


GREY_STEP = 10


def encode_video(num_frames: int, fps: int = 8, size: tuple[int, int] = (32, 24),
                 container_format: str = "mp4") -> bytes:
    """An H.264 video whose frame ``i`` is a flat grey of level ``GREY_STEP * i``.

    ``container_format="h264"`` writes a raw stream: no container, no duration anywhere.
    """
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0", "g": "4"}  # lossless-ish, keyframe every 4 frames: seeking matters
        for index in range(num_frames):
            pixels = np.full((size[1], size[0], 3), GREY_STEP * index, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def frame_index(frame: Image.Image) -> int:
    return int(round(float(np.asarray(frame, dtype=np.float64).mean()) / GREY_STEP))


# ------------------------------------------------------------------ images


def test_image_from_bytes_struct_and_paths_gives_the_encoded_pixels(tmp_path: Path):
    original = picture(1)
    data = png_bytes(original)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(data)
    cells = {
        "bytes": data,
        "struct with bytes": {"bytes": data, "path": "ignored-when-bytes-exist.png"},
        "struct with relative path": {"bytes": None, "path": "images/a.png"},
        "relative path string": "images/a.png",
        "absolute path string": str(tmp_path / "images" / "a.png"),
    }
    for shape, cell in cells.items():
        decoded = decode_image(cell, base_dir=str(tmp_path))
        assert decoded.mode == "RGB", shape
        assert np.array_equal(np.asarray(decoded), np.asarray(original)), shape


def test_transparency_is_flattened_onto_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4] = (200, 10, 10, 255)  # opaque red top half, fully transparent bottom half
    decoded = np.asarray(decode_image(png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert (decoded[:4] == (200, 10, 10)).all()
    assert (decoded[4:] == 255).all()


def test_exif_orientation_is_applied():
    image = picture(2, size=(40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (24, 40)


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (None, "empty (null)"),
        (b"", "zero bytes"),
        (b"plain text, not an image", "not an image"),
        (png_bytes(picture(3))[:60], "truncated"),
        ({"bytes": None, "path": None}, "neither bytes nor a path"),
        ("does/not/exist.png", "not found"),
        (12345, "unsupported media cell type int"),
    ],
)
def test_broken_image_cells_raise_media_error_saying_why(cell, message, tmp_path: Path):
    with pytest.raises(MediaError) as caught:
        decode_image(cell, base_dir=str(tmp_path))
    assert message in str(caught.value)


def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MediaError, match="too large"):
        decode_image(png_bytes(picture(4, size=(16, 8))))  # 128 px: between 1x and 2x the limit


def test_a_reader_serves_path_cells(tmp_path: Path):
    calls = []

    class Recording(MediaReader):
        def __call__(self, location: str) -> bytes:
            calls.append(location)
            return super().__call__(location)

    (tmp_path / "x.png").write_bytes(png_bytes(picture(5)))
    read_cell_bytes("x.png", base_dir=str(tmp_path), reader=Recording())
    assert calls == [str(tmp_path / "x.png")]


# ------------------------------------------------------------------ the decode stage


def test_decode_stage_keeps_every_row_and_turns_broken_cells_into_error_rows():
    good = picture(6)
    video = encode_video(12)
    batch = pa.table(
        {
            "key": [10, 11, 12, 13],
            "img": [png_bytes(good), b"broken", None, None],
            "clip": [None, None, video, None],
            "q": ["a?", "b?", "c?", "d?"],
        }
    )
    stage = DecodeStage(id_column="key", image_column="img", video_column="clip",
                        question_column="q",
                        video=VideoInput(native=True, sampling=FrameSampling(num_frames=3)))
    decoded = stage(batch)
    assert decoded.column("id").to_pylist() == ["10", "11", "12", "13"]
    assert decoded.column("status").to_pylist() == ["ok", "error", "ok", "error"]
    assert decoded.column("question").to_pylist() == ["a?", "b?", "c?", "d?"]
    errors = decoded.column("error").to_pylist()
    assert errors[0] is None and "not an image" in errors[1] and "empty (null)" in errors[3]
    rows = decoded.to_pylist()
    (image,) = unpack_frames(rows[0]["frames"], rows[0]["frame_width"], rows[0]["frame_height"])
    assert np.array_equal(np.asarray(image), np.asarray(good))
    frames = unpack_frames(rows[2]["frames"], rows[2]["frame_width"], rows[2]["frame_height"])
    assert len(frames) == 3 and rows[1]["frames"] == []
    # The video row says how it is read and when its frames are shown; image rows say nothing.
    clip = decode_video(video, FrameSampling(num_frames=3))
    assert [row["native_video"] for row in rows] == [None, None, True, None]
    assert rows[2]["frame_timestamps"] == clip.timestamps and len(clip.timestamps) == 3
    assert rows[2]["video_duration"] == clip.duration and rows[2]["sampled_fps"] == clip.sampled_fps
    assert rows[0]["frame_timestamps"] is None and rows[0]["video_duration"] is None


def test_cells_no_decoder_expected_become_error_rows_not_failed_blocks():
    # A struct column whose "bytes" field holds text: every decoder fails on it with a
    # TypeError, which must stay this row's error (a failed block would fail every rerun).
    batch = pa.table({
        "key": ["text-bytes", "good"],
        "img": pa.array([{"bytes": "not bytes at all", "path": None},
                         {"bytes": "", "path": None}],
                        type=pa.struct([("bytes", pa.string()), ("path", pa.string())])),
    })
    decoded = DecodeStage(id_column="key", image_column="img")(batch)
    assert decoded.column("status").to_pylist() == ["error", "error"]
    first, second = decoded.column("error").to_pylist()
    assert first.startswith("cannot decode the media cell: TypeError")
    assert "neither bytes nor a path" in second
    assert decoded.column("error_kind").to_pylist() == ["media", "media"]


def test_frames_that_change_size_mid_clip_are_a_media_error():
    with pytest.raises(MediaError, match=r"change size mid-clip: frame 0 is 40x24, frame 2 is 20x12"):
        pack_frames([picture(1), picture(2), picture(3, size=(20, 12))])
    data, width, height = pack_frames([picture(1), picture(2)])
    assert (width, height) == (40, 24) and [len(frame) for frame in data] == [40 * 24 * 3] * 2


def test_a_presigned_url_s_signature_never_reaches_the_error_row():
    from pipeline.redaction import Scrubber, redact, redact_url

    signature = "X-Amz-Signature=0123456789abcdef0123456789abcdef"
    url = (f"https://bucket.s3.amazonaws.com/images/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           f"&X-Amz-Credential=AKIAEXAMPLE%2F20261201&{signature}")
    assert redact_url(url) == "https://bucket.s3.amazonaws.com/images/a.png?***"
    assert redact({"path": url}) == {"path": "https://bucket.s3.amazonaws.com/images/a.png?***"}
    assert "AKIAEXAMPLE" not in Scrubber()(f"failed on {url} (twice: {url})")
    decoded = DecodeStage(id_column="key", image_column="img")(
        pa.table({"key": ["a"], "img": [url]}))
    (error,) = decoded.column("error").to_pylist()
    assert decoded.column("status").to_pylist() == ["error"]
    assert "images/a.png" in error  # still says which file
    assert "X-Amz" not in error and "AKIAEXAMPLE" not in error and "0123456789abcdef" not in error


def test_media_cells_over_the_caps_are_media_errors(monkeypatch):
    import pipeline.media as media

    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 100)
    with pytest.raises(MediaError, match=r"holds \d+ bytes, over the 100-byte cap"):
        decode_image(png_bytes(picture(1)))
    with pytest.raises(MediaError, match=r"holds \d+ bytes, over the 100-byte cap"):
        decode_video(encode_video(16, fps=8), FrameSampling(num_frames=4))
