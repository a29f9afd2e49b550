"""The read stage: the mapped columns of the rows still to do, one row group at a time.

A Ray Data ``Datasource`` over ``input_index`` fragments: each read task opens its
files on the worker (``storage_access``: no frozen credentials in the task where the
workers find their own), reads the job's columns of its row groups only (each row
group retried through transient storage failures, ``storage_options.max_attempts``
tries), keeps the rows still to do, and writes every id in its canonical form. A duplicate's id becomes
its stand-in, and ``DUPLICATE_COLUMN`` says where the id was first seen (the decode
stage turns that row into a ``duplicate_id`` error row).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.input_index import DUPLICATE_COLUMN, Fragment
from pipeline.retries import DEFAULT_ATTEMPTS, with_retries
from pipeline.row_ids import canonical_ids
from pipeline.storage_access import StorageAccess

_BATCH_ROWS = 1024  # rows decoded at a time inside a row group (bounded memory)


class RemainingRows(Datasource):
    """`columns` of the rows `fragments` name, through `access`."""

    def __init__(self, access: StorageAccess, columns: list[str], id_column: str,
                 fragments: list[Fragment], attempts: int = DEFAULT_ATTEMPTS) -> None:
        super().__init__()
        self.access = access
        self.attempts = attempts
        self.columns = columns
        self.id_column = id_column
        self.fragments = fragments

    def estimate_inmemory_data_size(self) -> int:
        return sum(fragment.estimated_bytes for fragment in self.fragments)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        for group in _split(self.fragments, max(1, parallelism)):
            read = functools.partial(_read_fragments, self.access, self.columns, self.id_column,
                                     group, self.attempts)
            metadata = BlockMetadata(
                num_rows=sum(f.rows for f in group),
                size_bytes=sum(f.estimated_bytes for f in group),
                input_files=tuple(dict.fromkeys(f.path for f in group)),
                exec_stats=None,
            )
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


def _split(fragments: list[Fragment], parts: int) -> list[list[Fragment]]:
    """`fragments` in order, cut into at most `parts` runs of about equal rows."""
    total = sum(f.rows for f in fragments)
    target = max(1, -(-total // parts))
    groups: list[list[Fragment]] = [[]]
    rows = 0
    for fragment in fragments:
        if rows >= target:
            groups.append([])
            rows = 0
        groups[-1].append(fragment)
        rows += fragment.rows
    return [group for group in groups if group]


def _read_fragments(access: StorageAccess, columns: list[str], id_column: str,
                    fragments: list[Fragment], attempts: int) -> Iterator[pa.Table]:
    filesystem = access.filesystem()
    for fragment in fragments:
        # A whole row group per try: a retry after a transient failure never yields a
        # row twice (at most one row group of the mapped columns is held at a time).
        yield from with_retries(
            lambda fragment=fragment: list(_read_fragment(filesystem, columns, id_column,
                                                          fragment)), attempts)


def _read_fragment(filesystem, columns: list[str], id_column: str,
                   fragment: Fragment) -> Iterator[pa.Table]:
    with filesystem.open_input_file(fragment.path) as handle:
        parquet = pq.ParquetFile(handle)
        start = 0
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS,
                                          row_groups=[fragment.row_group], columns=columns):
            table = pa.Table.from_batches([batch])
            end = start + table.num_rows
            if fragment.offsets is None:
                offsets = np.arange(start, end)
            else:
                low, high = np.searchsorted(fragment.offsets, [start, end])
                offsets = fragment.offsets[low:high]
            if len(offsets):
                yield _rows(table.take(offsets - start), offsets, id_column, fragment)
            start = end


def _rows(table: pa.Table, offsets: np.ndarray, id_column: str, fragment: Fragment) -> pa.Table:
    """`table` with canonical ids, duplicates' stand-ins, and ``DUPLICATE_COLUMN``."""
    ids = canonical_ids(table.column(id_column)).to_pylist()
    firsts: list[str | None] = [None] * len(ids)
    for index, offset in enumerate(offsets.tolist()):
        if offset in fragment.duplicates:
            stand_in, first_seen = fragment.duplicates[offset]
            firsts[index] = (f"duplicate id {ids[index]!r}: its first row is {first_seen}; "
                             f"this one is written as {stand_in!r}")
            ids[index] = stand_in
    table = table.set_column(table.schema.get_field_index(id_column), id_column,
                             pa.array(ids, pa.string()))
    return table.append_column(DUPLICATE_COLUMN, pa.array(firsts, pa.string()))
