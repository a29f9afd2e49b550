"""Generate the small sample datasets shipped in ``data/sample/`` (run: ``python -m pipeline.sample_data``).

``images.parquet``: ``id`` and ``image`` as a ``{bytes, path}`` struct, the way
Hugging Face ``datasets`` stores images. The pictures are coloured shapes on
gradients (PNG and JPEG, a few sizes), plus deliberately broken cells a real
dataset also has: truncated bytes, bytes that are not an image, a null cell.
``vqa.parquet``: ``id``, ``image`` and a ``question`` per row.
``videos.parquet``: ``id`` and ``video`` bytes (``pipeline.sample_videos``).

Everything is drawn from a fixed seed, so rerunning gives the same pictures.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
NUM_IMAGES = 40
NUM_QUESTIONS = 16
SEED = 20241011

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
QUESTIONS = (
    "What colour is the largest shape?",
    "How many shapes are in the picture?",
    "Is there a circle in the image?",
    "Describe the background.",
)
# Row positions (in images.parquet) of the broken cells, and what is wrong with them.
BROKEN_ROWS = {7: "truncated", 19: "not_an_image", 31: "null"}


def draw_picture(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A random picture of a few shapes on a gradient, and a short truth description."""
    width, height = (int(rng.choice([48, 64, 80, 96])) for _ in range(2))
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(width, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    names = []
    for _ in range(int(rng.integers(1, 4))):
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(["circle", "square"]))
        size = int(rng.integers(8, min(width, height) // 2 + 1))
        left, upper = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        box = (left, upper, left + size, upper + size)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        names.append(f"{colour} {shape}")
    return image, ", ".join(names)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 85} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def image_rows(count: int, rng: np.random.Generator, id_prefix: str) -> list[dict]:
    rows = []
    for index in range(count):
        image, _ = draw_picture(rng)
        image_format = "PNG" if index % 3 else "JPEG"
        suffix = "png" if image_format == "PNG" else "jpg"
        rows.append(
            {
                "id": f"{id_prefix}-{index:04d}",
                "image": {"bytes": encode(image, image_format), "path": f"{id_prefix}-{index:04d}.{suffix}"},
            }
        )
    return rows


def break_cells(rows: list[dict]) -> None:
    """Damage the cells listed in ``BROKEN_ROWS`` in place."""
    for position, damage in BROKEN_ROWS.items():
        cell = rows[position]["image"]
        if damage == "truncated":
            cell["bytes"] = cell["bytes"][: len(cell["bytes"]) // 3]
        elif damage == "not_an_image":
            cell["bytes"] = b"this is a text file, not an image\n" * 4
        else:
            rows[position]["image"] = None


def write_samples(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write ``images.parquet``, ``vqa.parquet`` and ``videos.parquet`` into `directory`;
    returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    images = image_rows(NUM_IMAGES, rng, "img")
    break_cells(images)
    images_path = directory / "images.parquet"
    pq.write_table(
        pa.table(
            {"id": [row["id"] for row in images], "image": [row["image"] for row in images]},
            schema=pa.schema([("id", pa.string()), ("image", IMAGE_TYPE)]),
        ),
        images_path,
    )
    questions = image_rows(NUM_QUESTIONS, rng, "vqa")
    vqa_path = directory / "vqa.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [row["id"] for row in questions],
                "image": [row["image"] for row in questions],
                "question": [QUESTIONS[index % len(QUESTIONS)] for index in range(len(questions))],
            },
            schema=pa.schema([("id", pa.string()), ("image", IMAGE_TYPE), ("question", pa.string())]),
        ),
        vqa_path,
    )
    from pipeline.sample_videos import video_rows

    videos = video_rows(np.random.default_rng(SEED))
    videos_path = directory / "videos.parquet"
    pq.write_table(pa.Table.from_pylist(videos, schema=pa.schema(
        [("id", pa.string()), ("video", pa.binary())])), videos_path)
    return [images_path, vqa_path, videos_path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder to write into")
    for path in write_samples(parser.parse_args().out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
