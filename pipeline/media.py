"""Decode the media cells of an input row into RGB PIL images.

An image cell is one of the shapes datasets hold images in: raw encoded bytes,
the ``{"bytes": ..., "path": ...}`` struct that Hugging Face ``datasets``
writes (bytes win when present), or a path / URI string (local or ``s3://``,
read through ``pipeline.storage``). Video cells take the same shapes; their
frames are ``pipeline.video``'s job, on top of ``read_cell_bytes`` and ``MediaError``.

Every failure is a ``MediaError`` whose message says what was wrong with the
cell, so the pipeline can turn it into an error row instead of failing a job.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import SystemFault, first_line
from pipeline.redaction import redact_url, redact_urls_in
from pipeline.retries import DEFAULT_ATTEMPTS, is_transient, with_retries

# Caps on one media cell, so that one row cannot exhaust a decode worker (an image's
# pixel count is capped by Pillow's decompression-bomb limit, read from its header;
# a video's caps are in pipeline.video).
MAX_MEDIA_BYTES = 1024**3

# Bytes of a cell shown in messages: enough to recognise "not an image" cases.
_PREVIEW_BYTES = 16


class MediaError(Exception):
    """A media cell could not be read or decoded; the message says why.

    ``kind`` is the row's ``error_kind`` (``pipeline.errors.ERROR_KINDS``).
    """

    def __init__(self, message: str, kind: str = "media") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.kind)


@dataclass(frozen=True)
class MediaReader:
    """Reads the file a path / URI cell names.

    ``input_access`` (``pipeline.storage_access``) reaches the job input's store, so
    ``s3://`` paths in the cells are read the way the input is; other locations go
    through ``pipeline.storage`` with ``storage_options``.
    """

    storage_options: Mapping[str, Any] | None = None
    input_access: Any = None
    max_attempts: int = DEFAULT_ATTEMPTS

    def __call__(self, location: str) -> bytes:
        try:
            return with_retries(lambda: self._read(location), self.max_attempts)
        except Exception as raw_error:
            # These messages end up in error rows, in the output: no presigned URL's
            # signature or user info in them (DecodeStage redacts the whole text too).
            error = redact_urls_in(str(raw_error))
            location = redact_url(location)
            # pipeline.storage wraps a missing file in its own StorageError.
            if isinstance(raw_error, FileNotFoundError) \
                    or isinstance(raw_error.__cause__, FileNotFoundError):
                raise MediaError(f"media file not found: {location}", kind="missing_media") from None
            # pipeline.storage wraps pyarrow's error; the cause says whether it is transient.
            if is_transient(raw_error) or (raw_error.__cause__ is not None
                                           and is_transient(raw_error.__cause__)):
                # The storage, not the row: stop the job (rerun to resume), write no error row.
                raise SystemFault(f"storage unreachable after {self.max_attempts} attempt(s): "
                                  f"cannot read media file {location}: {first_line(error)}") from None
            raise MediaError(f"cannot read media file {location}: {error}") from None

    def _read(self, location: str) -> bytes:
        from pipeline.storage import is_s3, read_bytes

        if self.input_access is not None and is_s3(location) and is_s3(self.input_access.uri):
            bucket_and_key = location.split("://", 1)[1]
            with self.input_access.filesystem().open_input_stream(bucket_and_key) as stream:
                return stream.read()
        options = dict(self.storage_options) if self.storage_options else None
        return read_bytes(location, options)


def decode_image(
    cell: Any, *, base_dir: str | None = None, reader: MediaReader | None = None
) -> Image.Image:
    """The RGB image held by `cell` (bytes, ``{bytes, path}`` struct, or path / URI).

    `base_dir` resolves relative paths (the input dataset's folder); EXIF
    orientation is applied and transparency is flattened onto white.
    """
    data = read_cell_bytes(cell, base_dir=base_dir, reader=reader)
    # Pillow only warns between 1x and 2x its pixel limit; treat that as an error too
    # rather than letting one huge image stall a decode worker.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise MediaError(f"image too large to decode safely: {error}") from None
        except UnidentifiedImageError:
            raise MediaError(
                f"not an image in a format Pillow reads ({len(data)} bytes, "
                f"starting {data[:_PREVIEW_BYTES]!r})"
            ) from None
        except Exception as error:
            raise MediaError(
                f"cannot decode image ({len(data)} bytes, starting {data[:_PREVIEW_BYTES]!r}): "
                f"{type(error).__name__}: {error}"
            ) from None
    return to_rgb(image)


def read_cell_bytes(cell: Any, *, base_dir: str | None = None, reader: MediaReader | None = None) -> bytes:
    """The encoded bytes a media cell refers to (see the module docstring for the shapes).

    More than ``MAX_MEDIA_BYTES`` is an error: one cell must not exhaust a decode worker.
    """
    data = _cell_bytes(cell, base_dir, reader)
    if len(data) > MAX_MEDIA_BYTES:
        raise MediaError(f"the media cell holds {len(data)} bytes, over the "
                         f"{MAX_MEDIA_BYTES}-byte cap")
    return data


def _cell_bytes(cell: Any, base_dir: str | None, reader: MediaReader | None) -> bytes:
    if cell is None:
        raise MediaError("the media cell is empty (null)")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        data = bytes(cell)
        if not data:
            raise MediaError("the media cell holds zero bytes")
        return data
    if isinstance(cell, Mapping):
        data = cell.get("bytes")
        if data is not None and len(data) > 0:
            return bytes(data)
        path = cell.get("path")
        if path:
            return _read_path(str(path), base_dir, reader)
        raise MediaError("the media struct has neither bytes nor a path")
    if isinstance(cell, str):
        if not cell.strip():
            raise MediaError("the media cell is an empty string")
        return _read_path(cell, base_dir, reader)
    raise MediaError(
        f"unsupported media cell type {type(cell).__name__}: expected bytes, "
        "a {bytes, path} struct or a path / URI string"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB; transparent pixels are composited onto white (not black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resolve_media_path(path: str, base_dir: str | None) -> str:
    """`path` unchanged when absolute or a URI; otherwise joined onto `base_dir`."""
    if "://" in path or os.path.isabs(path) or not base_dir:
        return path
    if "://" in base_dir:
        return base_dir.rstrip("/") + "/" + path
    return os.path.join(base_dir, path)


def _read_path(path: str, base_dir: str | None, reader: MediaReader | None) -> bytes:
    location = resolve_media_path(path, base_dir)
    data = (reader or MediaReader())(location)
    if not data:
        raise MediaError(f"media file is empty: {location}")
    return data
