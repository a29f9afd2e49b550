"""The job's input: which Parquet files it names, how many rows, the first ``limit`` ids.

``input.path`` is a file, a folder (every ``.parquet`` file under it, hidden and
``_``-prefixed names skipped, as Parquet readers do) or a glob, local or ``s3://``.
Relative media paths in the rows resolve against ``media_base_dir``.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.output import filesystem_for
from pipeline.row_ids import canonical_ids
from pipeline.storage import explain_storage_error

_GLOB_CHARACTERS = "*?["


def input_files(spec: Any) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of the job's input (a file, a folder, or a glob)."""
    options = storage_options_for(spec.input.storage_options)
    uri = spec.input.path
    try:
        filesystem, path = filesystem_for(uri, options)
        if any(character in path for character in _GLOB_CHARACTERS):
            files = _glob(filesystem, path)
        else:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.File:
                files = [path]
            elif info.type == pafs.FileType.Directory:
                files = _parquet_files_under(filesystem, path)
            else:
                raise JobError(f"input.path: {uri} does not exist")
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"input.path: {explain_storage_error('list', uri, options, error)}") from error
    if not files:
        raise JobError(f"input.path: no Parquet files found at {uri}")
    return filesystem, files


def count_rows(filesystem: pafs.FileSystem, files: list[str]) -> int:
    """Rows in the input files, from their Parquet footers (no data is read)."""
    total = 0
    for path in files:
        try:
            with filesystem.open_input_file(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        except Exception as error:
            raise JobError(f"input.path: cannot read the Parquet footer of {path}: {error}") from error
    return total


def count_null_ids(filesystem: pafs.FileSystem, files: list[str], id_column: str) -> int:
    """Null cells of the id column, from the footers' statistics (where a writer left none,
    that row group is not counted: the decode stage still turns such a row into an error)."""
    nulls = 0
    for path in files:
        with filesystem.open_input_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
        if id_column not in names:
            continue
        index = names.index(id_column)
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(index).statistics
            if statistics is not None and statistics.has_null_count:
                nulls += statistics.null_count
    return nulls


def _parquet_files_under(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not _hidden(posixpath.relpath(info.path, directory))
    )


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[str]:
    first = min(pattern.index(c) for c in _GLOB_CHARACTERS if c in pattern)
    base = pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else "."
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and fnmatch.fnmatchcase(info.path, pattern)
        and not _hidden(posixpath.relpath(info.path, base))
    )


def _hidden(relative_path: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


def storage_options_for(job_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A job's ``storage_options`` as ``pipeline.storage`` takes them (None when empty)."""
    return dict(job_options) if job_options else None


# ------------------------------------------------------------------ Ray


def first_ids(filesystem: pafs.FileSystem, files: list[str], id_column: str, limit: int) -> tuple[list[str], pa.Array]:
    """The first `limit` ids in file order, and the files that hold them.

    ``input.limit`` is resolved here on the driver rather than with Ray's
    ``limit``, whose choice of rows depends on which read finishes first: a
    resumed run must see the same rows as the run it resumes.
    """
    chunks, needed_files, count = [], [], 0
    for path in files:
        if count >= limit:
            break
        ids = pq.read_table(path, columns=[id_column], filesystem=filesystem).column(id_column)
        chunks.append(canonical_ids(ids))
        needed_files.append(path)
        count += len(ids)
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    return needed_files, ids.slice(0, limit)


def media_base_dir(uri: str) -> str:
    """The folder that relative media paths in the input are resolved against."""
    if any(character in uri for character in _GLOB_CHARACTERS):
        uri = uri[: min(uri.index(c) for c in _GLOB_CHARACTERS if c in uri)]
        return uri.rsplit("/", 1)[0] if "/" in uri else "."
    if uri.endswith(".parquet"):
        return uri.rsplit("/", 1)[0] if "/" in uri else "."
    return uri
