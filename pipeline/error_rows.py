"""``zipvl-batch run --retry-errors``: take the error rows out of their shards, so the run
that follows redoes them as missing rows.

Each shard holding error rows is rewritten without them, atomically (a local rename
or one S3 object), or deleted when nothing else is left in it; then the run resumes as
any rerun does. Removing before redoing is what keeps every id once: a crash between
the two leaves the rows missing (the next run does them), never present twice. The
redone rows land in this run's new shards, not back in the old files.

``duplicate_id`` rows stay: they come from the input, and would come back the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.output import list_shards, write_bytes_atomically
from pipeline.retries import DEFAULT_ATTEMPTS, with_retries

KEPT_KINDS = ("duplicate_id",)


@dataclass(frozen=True)
class Removed:
    """What ``remove_error_rows`` took out: rows, and the shards it rewrote or deleted."""

    rows: int
    shards_rewritten: int
    shards_deleted: int


def remove_error_rows(filesystem: pafs.FileSystem, directory: str,
                      attempts: int = DEFAULT_ATTEMPTS) -> Removed:
    """Rewrite each finished shard in `directory` without its retryable error rows."""
    rows = rewritten = deleted = 0
    for path in list_shards(filesystem, directory):
        table = with_retries(lambda path=path: _read(filesystem, path), attempts)
        retry = _retryable(table)
        count = pc.sum(retry).as_py() or 0
        if not count:
            continue
        rest = table.filter(pc.invert(retry))
        if rest.num_rows:
            sink = pa.BufferOutputStream()
            pq.write_table(rest.combine_chunks(), sink, compression="zstd")  # metadata kept
            write_bytes_atomically(filesystem, path, sink.getvalue().to_pybytes(), attempts)
            rewritten += 1
        else:
            with_retries(lambda path=path: filesystem.delete_file(path), attempts)
            deleted += 1
        rows += count
    return Removed(rows, rewritten, deleted)


def _read(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    with filesystem.open_input_file(path) as handle:
        return pq.read_table(handle)


def _retryable(table: pa.Table) -> pa.ChunkedArray:
    """Per row: an error row whose kind is not one of ``KEPT_KINDS``."""
    retry = pc.equal(table.column("status"), "error")
    if "error_kind" in table.column_names:  # shards of older versions have none
        kept = pc.is_in(table.column("error_kind"), value_set=pa.array(KEPT_KINDS, pa.string()))
        retry = pc.and_(retry, pc.invert(kept))
    return pc.fill_null(retry, False)
