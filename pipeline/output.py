"""The output dataset: its schema, an atomic shard writer, and the id scan for resume.

A job's output is a folder (local or ``s3://``) of Parquet shards named
``part-<run id>-<sequence>.parquet``. A shard is never visible half written:
locally it is written to ``.<name>.tmp`` and renamed into place (a rename is
atomic within a file system); on S3 it is one object, which S3 makes visible
only once the upload completes. Readers skip names that start with ``.``
(pyarrow, pandas, Ray, Spark and Hugging Face ``datasets`` all do; ``datasets``
does not skip ``_``), so the temporary files and the run metadata in ``.zipvl/``
never disturb them; DuckDB and Polars read what a ``*.parquet`` glob names. Run ids make shard names unique, so a
resumed run only ever adds files.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.retries import DEFAULT_ATTEMPTS, with_retries

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("output", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("kept_ratio", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("method", pa.string()),
        # Video rows: when each sampled frame is shown (seconds from the clip's start) and
        # the clip's length in seconds; null for image rows.
        pa.field("frame_timestamps", pa.list_(pa.float64())),
        pa.field("video_duration", pa.float64()),
    ]
)
OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
METADATA_PREFIX = "zipvl_batch."


def filesystem_for(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system holding `uri` and the path inside it (see ``pipeline.storage``)."""
    from pipeline.storage import resolve_filesystem

    return resolve_filesystem(uri, dict(storage_options) if storage_options else None)


def new_run_id() -> str:
    """A run id that sorts by start time and does not collide between runs."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def is_shard_name(name: str) -> bool:
    """Whether a file name in the output folder is a finished shard (not a temp file)."""
    return name.endswith(SHARD_SUFFIX) and not name.startswith((".", "_"))


def list_shards(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    """Paths of the finished shards in `directory` (empty when it does not exist)."""
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
    infos = filesystem.get_file_info(selector)
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File and is_shard_name(posixpath.basename(info.path))
    )


# Unreadable shards are moved here (hidden: readers skip it) and their rows redone.
QUARANTINE_DIR = ".zipvl/unreadable"


@dataclass(frozen=True)
class ExistingOutput:
    """What finished shards already hold: their ids (the work resume skips), the
    kinds of their error rows (they count against ``output.max_error_fraction``), and
    the unreadable shards moved aside (``moved_aside``: original path -> new path)."""

    ids: pa.Array
    errors_by_kind: Counter
    moved_aside: dict[str, str]


def existing_output(filesystem: pafs.FileSystem, directory: str) -> ExistingOutput:
    """Read the id, status and error kind columns of every finished shard.

    A shard that cannot be read as Parquet (zero-length or truncated: a crash of a
    machine that had not flushed it to disk) is moved into ``QUARANTINE_DIR`` and its
    rows are not counted as done, so this run redoes them instead of every rerun
    failing on it. An error of the store itself (access, network) is raised.
    """
    chunks: list[pa.Array] = []
    errors: Counter = Counter()
    moved: dict[str, str] = {}
    for path in list_shards(filesystem, directory):
        try:
            with filesystem.open_input_file(path) as handle:
                shard = pq.ParquetFile(handle)
                # Shards of older versions have no error_kind column.
                columns = [name for name in ("id", "status", "error_kind")
                           if name in shard.schema_arrow.names]
                table = shard.read(columns=columns)
        except (pa.ArrowInvalid, OSError) as error:
            if not _is_corrupt_parquet(error):
                raise
            moved[path] = _move_aside(filesystem, directory, path)
            continue
        chunks.extend(table.column("id").cast(pa.string()).chunks)
        failed = table.filter(pc.equal(table.column("status"), "error"))
        kinds = (failed.column("error_kind").to_pylist() if "error_kind" in columns
                 else [None] * failed.num_rows)
        errors.update(kind or "unknown" for kind in kinds)
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], type=pa.string())
    del chunks
    # The shards' decoding buffers: at 10M ids Arrow keeps ~300 MB of them for reuse.
    pa.default_memory_pool().release_unused()
    return ExistingOutput(ids=ids, errors_by_kind=errors, moved_aside=moved)


def _is_corrupt_parquet(error: Exception) -> bool:
    # pyarrow raises ArrowInvalid for a bad footer or magic bytes ("Parquet file size is
    # 0 bytes", "Parquet magic bytes not found"), and OSError for a truncated body
    # ("Couldn't deserialize thrift", "Unexpected end of stream").
    text = str(error)
    return isinstance(error, pa.ArrowInvalid) or any(
        marker in text for marker in ("Parquet", "thrift", "end of stream", "Unexpected end"))


def _move_aside(filesystem: pafs.FileSystem, directory: str, path: str) -> str:
    target_dir = posixpath.join(directory, QUARANTINE_DIR)
    filesystem.create_dir(target_dir, recursive=True)
    target = posixpath.join(target_dir, posixpath.basename(path))
    filesystem.move(path, target)
    return target


def remove_stale_temp_files(filesystem: pafs.FileSystem, directory: str) -> int:
    """Delete temp shards left by a crashed run (``.part-*.tmp``); returns how many.

    Only one run may write to an output folder at a time, so any temp file found
    before a run starts belongs to a run that died.
    """
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
    removed = 0
    for info in filesystem.get_file_info(selector):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.startswith("." + SHARD_PREFIX) and name.endswith(".tmp"):
            filesystem.delete_file(info.path)
            removed += 1
    return removed


def write_bytes_atomically(filesystem: pafs.FileSystem, path: str, data: bytes,
                           attempts: int = DEFAULT_ATTEMPTS) -> None:
    """Write `data` to `path` so that readers see either nothing or all of it.

    On an object store the upload is retried through transient failures (`attempts`
    calls in all): each try is a whole object, so a failed one leaves nothing behind.
    """
    directory, name = posixpath.split(path)
    local_directory = _local_path(filesystem, directory)
    if local_directory is not None:
        # fsync the file before the rename and the folder after it: a shard that is
        # visible survives a power loss or a machine crash whole, not zero-length.
        os.makedirs(local_directory, exist_ok=True)
        temp_path = os.path.join(local_directory, f".{name}.tmp")
        with open(temp_path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, os.path.join(local_directory, name))
        folder = os.open(local_directory, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    else:
        # Object stores publish an object only when its upload completes.
        def upload() -> None:
            with filesystem.open_output_stream(path) as stream:
                stream.write(data)

        with_retries(upload, attempts)


def read_json(filesystem: pafs.FileSystem, path: str) -> Any:
    """The JSON document at `path`, or None when there is none (a malformed one raises)."""
    try:
        with filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def schema_metadata(settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Parquet schema metadata from job settings: ``zipvl_batch.<key>`` -> JSON."""
    return {
        (METADATA_PREFIX + key).encode(): json.dumps(value, sort_keys=True, default=str).encode()
        for key, value in settings.items()
    }


class ShardWriter:
    """Buffers output rows and writes them as ``rows_per_file``-row shards, atomically.

    ``write`` takes any table holding the output columns (extra columns are
    dropped); full shards are written as soon as they fill, ``flush`` writes
    the rest. ``shards`` lists what was written, in order.
    """

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        directory: str,
        run_id: str,
        rows_per_file: int,
        metadata: Mapping[bytes, bytes] | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.filesystem = filesystem
        self.directory = directory
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.attempts = attempts
        self.schema = OUTPUT_SCHEMA.with_metadata(dict(metadata or {}))
        self.shards: list[str] = []
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        filesystem.create_dir(directory, recursive=True)

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def write(self, table: pa.Table) -> list[str]:
        """Buffer `table`'s rows; returns the paths of shards written by this call."""
        if table.num_rows == 0:
            return []
        self._pending.append(self._conform(table))
        self._pending_rows += table.num_rows
        written = []
        while self._pending_rows >= self.rows_per_file:
            buffered = pa.concat_tables(self._pending)
            rest = buffered.slice(self.rows_per_file)
            # Take the rows out of the buffer before writing: if an interrupt lands
            # mid-write, a later flush must not write them a second time (a rerun
            # redoes lost rows; duplicated ones could not be undone).
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows = rest.num_rows
            written.append(self._write_shard(buffered.slice(0, self.rows_per_file)))
        return written

    def flush(self) -> str | None:
        """Write the buffered rows as a (possibly short) shard; returns its path if any."""
        if not self._pending_rows:
            return None
        buffered = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        return self._write_shard(buffered)

    def _conform(self, table: pa.Table) -> pa.Table:
        missing = [name for name in OUTPUT_COLUMNS if name not in table.column_names]
        if missing:
            raise ValueError(f"output rows lack column(s) {missing}")
        columns = [table.column(field.name).cast(field.type) for field in OUTPUT_SCHEMA]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _write_shard(self, table: pa.Table) -> str:
        name = f"{SHARD_PREFIX}{self.run_id}-{len(self.shards):05d}{SHARD_SUFFIX}"
        path = posixpath.join(self.directory, name)
        # Serialise in memory first: a failure while encoding never reaches storage.
        buffer = pa.BufferOutputStream()
        pq.write_table(table.combine_chunks(), buffer, compression="zstd")
        write_bytes_atomically(self.filesystem, path, buffer.getvalue().to_pybytes(),
                               self.attempts)
        self.shards.append(path)
        self.rows_written += table.num_rows
        return path


def _local_path(filesystem: pafs.FileSystem, path: str) -> str | None:
    """The operating-system path of `path` when `filesystem` is local, else None."""
    if isinstance(filesystem, pafs.SubTreeFileSystem):
        base = _local_path(filesystem.base_fs, filesystem.base_path)
        return None if base is None else os.path.join(base, path.lstrip("/"))
    return path if isinstance(filesystem, pafs.LocalFileSystem) else None
