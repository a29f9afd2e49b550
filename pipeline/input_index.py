"""Which input rows are still to do, and where they sit, from the id column alone.

A resume must not re-read the media of the work already finished: at 10M rows of
~200 KB images, 99% done, that would be 2 TB read to do 100K rows. So the driver
reads only the id column of every input file (one column chunk per row group) and
works out, per row group, the row offsets whose ids are not in the output yet; the
read stage (``input_source``) then reads the media columns of those row groups only.
img2dataset's per-shard markers are the same idea at file granularity.

The index also settles, once and in file order, what the rows' ids are:

* ``input.limit`` keeps the first `limit` rows (file order, not whichever read finishes
  first, so a resumed run sees the same rows as the run it resumes);
* a repeated id is a **duplicate**: its first occurrence is the row, each later one an
  error row written under a stand-in id, ``<id>#duplicate-<k>`` (k = 2, 3, ...), so the
  output still holds every id once and a rerun recognises the stand-ins as done.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.row_ids import canonical_ids

DUPLICATE_MARK = "#duplicate-"
# The read stage's column saying where a duplicate's id was first seen (null otherwise).
DUPLICATE_COLUMN = "_duplicate_of"
_READ_THREADS = 16  # footers and id chunks are small reads: latency-bound on S3


@dataclass(frozen=True)
class Fragment:
    """One row group with work left: its rows to read and the duplicates among them.

    ``offsets`` are row offsets inside the row group (None: all of its rows).
    ``duplicates`` maps an offset to ``(stand-in id, where the id was first seen)``.
    """

    path: str
    row_group: int
    offsets: np.ndarray | None
    duplicates: dict[int, tuple[str, str]]
    rows: int
    estimated_bytes: int


@dataclass(frozen=True)
class InputIndex:
    """The job's rows (after ``input.limit``) and the fragments still to read."""

    input_rows: int
    done_rows: int
    duplicate_rows: int
    fragments: list[Fragment]

    @property
    def to_process(self) -> int:
        return self.input_rows - self.done_rows


@dataclass(frozen=True)
class _FileIds:
    path: str
    rows: int
    group_rows: list[int]
    group_bytes: list[int]


def index_input(filesystem: pafs.FileSystem, files: list[str], id_column: str,
                done_ids: pa.Array, limit: int | None = None) -> InputIndex:
    """The rows of `files` whose (canonical, duplicate-resolved) id is not in `done_ids`."""
    per_file, ids = _read_ids(filesystem, files, id_column, limit)
    if limit is not None:
        ids = ids.slice(0, limit)
    # Where each file's rows and each row group's rows start, as global row positions.
    group_starts, group_of, starts = [], [], 0
    for file_index, file_ids in enumerate(per_file):
        for group, rows in enumerate(file_ids.group_rows):
            group_starts.append(starts)
            group_of.append((file_index, group))
            starts += rows
    group_starts_array = np.asarray(group_starts, dtype=np.int64)

    def where(position: int) -> str:
        index = int(np.searchsorted(group_starts_array, position, side="right") - 1)
        file_index, group = group_of[index]
        row_in_file = position - group_starts[index] + sum(per_file[file_index].group_rows[:group])
        return f"{per_file[file_index].path} row {row_in_file}"

    effective, duplicates = _resolve_duplicates(ids, where)
    _release_freed_memory()  # the sort's indices and sorted copy
    remaining = np.ones(len(ids), dtype=bool)
    if len(done_ids) and len(ids):
        remaining = ~pc.is_in(effective, value_set=done_ids).to_numpy(zero_copy_only=False)
        _release_freed_memory()  # the hash set of the done ids (~50 bytes an id)
    positions = np.flatnonzero(remaining)
    duplicate_positions = np.asarray(sorted(duplicates), dtype=np.int64)
    fragments = []
    if len(positions):
        groups = np.searchsorted(group_starts_array, positions, side="right") - 1
        bounds = np.flatnonzero(np.diff(groups)) + 1
        for chunk, index in zip(np.split(positions, bounds), groups[np.r_[0, bounds]]):
            index = int(index)
            file_index, group = group_of[index]
            file_ids = per_file[file_index]
            group_size = file_ids.group_rows[group]
            offsets = chunk - group_starts[index]
            fragments.append(Fragment(
                path=file_ids.path, row_group=group,
                offsets=None if len(offsets) == group_size else offsets.astype(np.int64),
                duplicates={int(p) - group_starts[index]: duplicates[int(p)]
                            for p in _duplicates_in(chunk, duplicate_positions)},
                rows=len(offsets),
                estimated_bytes=file_ids.group_bytes[group] * len(offsets) // max(group_size, 1),
            ))
    return InputIndex(input_rows=len(ids), done_rows=len(ids) - len(positions),
                      duplicate_rows=len(duplicates), fragments=fragments)


def _duplicates_in(chunk: np.ndarray, duplicate_positions: np.ndarray) -> np.ndarray:
    """The duplicates' positions among `chunk` (sorted positions of one row group)."""
    if not len(duplicate_positions):
        return duplicate_positions
    low, high = np.searchsorted(duplicate_positions, [chunk[0], chunk[-1] + 1])
    candidates = duplicate_positions[low:high]
    return candidates[np.isin(candidates, chunk)]


def _read_ids(filesystem: pafs.FileSystem, files: list[str], id_column: str,
              limit: int | None) -> tuple[list[_FileIds], pa.ChunkedArray]:
    """Each file's row-group sizes (with `limit`, only the files needed), and all their
    canonical ids in file order."""

    def read(path: str) -> tuple[_FileIds, pa.Array]:
        try:
            with filesystem.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                metadata = parquet.metadata
                ids = canonical_ids(parquet.read(columns=[id_column]).column(id_column))
        except Exception as error:
            raise JobError(f"input.path: cannot read the id column {id_column!r} of {path}: "
                           f"{error}") from error
        groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
        return _FileIds(path, len(ids), [g.num_rows for g in groups],
                        [g.total_byte_size for g in groups]), ids

    if limit is None:
        with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            results = list(pool.map(read, files))
    else:
        results, count = [], 0
        for path in files:  # in order, and only as far as the limit reaches
            if count >= limit:
                break
            results.append(read(path))
            count += results[-1][0].rows
    # Chunked, not concatenated: a copy of 10M ids is 160 MB of the driver's peak.
    ids = pa.chunked_array([ids for _, ids in results], pa.string())
    per_file = [file_ids for file_ids, _ in results]
    del results
    _release_freed_memory()  # the per-file arrays and the files' decoding buffers
    return per_file, ids


def _release_freed_memory() -> None:
    """Hand Arrow's freed memory back to the system: the driver's peak at 10M rows."""
    pa.default_memory_pool().release_unused()


def _resolve_duplicates(ids: pa.ChunkedArray, where) -> tuple[pa.ChunkedArray | pa.Array,
                                                               dict[int, tuple[str, str]]]:
    """The ids as written (later occurrences of an id replaced by stand-ins) and, per
    duplicate's position, its stand-in and where its id was first seen.

    By a stable sort rather than a hash: at 10M ids Arrow's hash table (``count_distinct``)
    took 1.4 GB, the sort 0.25 GB.
    """
    if len(ids) < 2:
        return ids, {}
    order = pc.sort_indices(ids)  # stable: equal ids keep their file order
    in_order = ids.take(order)
    repeats = pc.equal(in_order.slice(1), in_order.slice(0, len(ids) - 1))
    del in_order
    repeats = repeats.to_numpy(zero_copy_only=False)
    if not repeats.any():
        return ids, {}
    order = order.to_numpy()
    group_start = np.flatnonzero(np.r_[True, ~repeats])
    first_in_group = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    rank = np.arange(len(order)) - first_in_group  # 0 for the first occurrence
    duplicates: dict[int, tuple[str, str]] = {}
    for sorted_index in np.flatnonzero(rank > 0):
        position = int(order[sorted_index])
        first = int(order[first_in_group[sorted_index]])
        original = ids[position].as_py()
        duplicates[position] = (f"{original}{DUPLICATE_MARK}{int(rank[sorted_index]) + 1}",
                                where(first))
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    mask = np.zeros(len(ids), dtype=bool)
    positions = sorted(duplicates)
    mask[positions] = True
    effective = pc.replace_with_mask(ids, pa.array(mask),
                                     pa.array([duplicates[p][0] for p in positions], pa.string()))
    return effective, duplicates
