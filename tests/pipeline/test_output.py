"""The shard writer: row splitting, atomic visibility, resume scan, S3 objects."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.output import (
    OUTPUT_SCHEMA,
    ShardWriter,
    existing_output,
    is_shard_name,
    remove_stale_temp_files,
    schema_metadata,
    write_bytes_atomically,
)

pytest_plugins = ["tests.s3_server"]


def rows(start: int, count: int, text_length: int = 8) -> pa.Table:
    ids = [f"row-{index:05d}" for index in range(start, start + count)]
    return pa.table(
        {
            "id": ids,
            "output": ["x" * text_length for _ in ids],
            "status": ["ok"] * count,
            "error": [None] * count,
            "error_kind": [None] * count,
            "prompt_tokens": [index % 7 for index in range(count)],
            "output_tokens": [index % 5 for index in range(count)],
            "kept_ratio": [None] * count,
            "model": ["m"] * count,
            "method": ["dense"] * count,
            "frame_timestamps": pa.nulls(count, pa.list_(pa.float64())),
            "video_duration": pa.nulls(count, pa.float64()),
            "_node_id": ["n"] * count,  # private columns are not written
        }
    )


def local_writer(directory: Path, run_id: str = "run-a", rows_per_file: int = 10, **kwargs) -> ShardWriter:
    return ShardWriter(pafs.LocalFileSystem(), str(directory), run_id, rows_per_file, **kwargs)


def test_rows_are_split_into_shards_of_rows_per_file_in_order(tmp_path: Path):
    writer = local_writer(tmp_path, metadata=schema_metadata({"model": {"name": "tiny"}}))
    for start, count in [(0, 7), (7, 9), (16, 9)]:  # batches that straddle shard borders
        writer.write(rows(start, count))
    writer.flush()
    assert [pq.read_metadata(path).num_rows for path in writer.shards] == [10, 10, 5]
    table = pa.concat_tables(pq.read_table(path) for path in writer.shards)
    assert table.column("id").to_pylist() == rows(0, 25).column("id").to_pylist()
    schema = pq.read_schema(writer.shards[0])
    assert schema.remove_metadata().equals(OUTPUT_SCHEMA)
    assert json.loads(schema.metadata[b"zipvl_batch.model"]) == {"name": "tiny"}
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(Path(p).name for p in writer.shards)


def test_missing_output_columns_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="status"):
        local_writer(tmp_path).write(rows(0, 3).drop(["status"]))


def test_a_second_run_adds_shards_and_the_scan_finds_every_id(tmp_path: Path):
    first = local_writer(tmp_path, run_id="run-a", rows_per_file=4)
    first.write(rows(0, 6))
    first.flush()
    second = local_writer(tmp_path, run_id="run-b", rows_per_file=4)
    second.write(rows(6, 5))
    second.flush()
    assert not set(first.shards) & set(second.shards)
    # Neither temp files nor the report are shards.
    (tmp_path / ".part-run-c-00000.parquet.tmp").write_bytes(b"half a shard")
    (tmp_path / "_report.json").write_text("{}")
    found = existing_output(pafs.LocalFileSystem(), str(tmp_path)).ids.to_pylist()
    assert sorted(found) == rows(0, 11).column("id").to_pylist()
    assert existing_output(pafs.LocalFileSystem(), str(tmp_path / "absent")).ids.to_pylist() == []


def test_the_scan_counts_earlier_error_rows_by_kind_also_in_older_shards(tmp_path: Path):
    table = rows(0, 6)
    statuses = ["ok", "error", "error", "ok", "error", "ok"]
    kinds = [None, "media", "too_long", None, "media", None]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(statuses))
    table = table.set_column(table.schema.get_field_index("error_kind"), "error_kind", pa.array(kinds))
    writer = local_writer(tmp_path, rows_per_file=4)
    writer.write(table)
    writer.flush()
    # A shard written before error_kind existed: its error rows are of unknown kind.
    older = rows(6, 2).drop(["error_kind", "_node_id"])
    older = older.set_column(older.schema.get_field_index("status"), "status", pa.array(["error", "ok"]))
    pq.write_table(older, tmp_path / "part-older-00000.parquet")
    found = existing_output(pafs.LocalFileSystem(), str(tmp_path))
    assert sorted(found.ids.to_pylist()) == rows(0, 8).column("id").to_pylist()
    assert found.errors_by_kind == {"media": 2, "too_long": 1, "unknown": 1}


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path: Path):
    writer = local_writer(tmp_path, rows_per_file=3)
    writer.write(rows(0, 3))
    (tmp_path / ".part-run-x-00001.parquet.tmp").write_bytes(b"left by a crash")
    (tmp_path / "_report.json").write_text("{}")
    assert remove_stale_temp_files(pafs.LocalFileSystem(), str(tmp_path)) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [Path(writer.shards[0]).name, "_report.json"]
    )


class SlowLocalFileSystem(pafs.LocalFileSystem):
    """A local file system whose writes trickle in, so a partial file lives long enough to be seen."""

    def open_output_stream(self, path, *args, **kwargs):
        return _TrickleFile(path)


class _TrickleFile:
    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed in __exit__)

    def write(self, data) -> int:
        data = bytes(data)
        for start in range(0, len(data), 512):
            self.file.write(data[start : start + 512])
            self.file.flush()
            time.sleep(0.0005)
        return len(data)

    def __enter__(self) -> _TrickleFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


def test_a_concurrent_reader_never_sees_a_partial_shard(tmp_path: Path):
    """Readers list the folder while shards trickle out; every shard they see is whole."""
    rows_per_file, shards = 20, 6
    writer = ShardWriter(SlowLocalFileSystem(), str(tmp_path), "run-a", rows_per_file)
    done = threading.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []

    def read_while_writing() -> None:
        while True:
            finished = done.is_set()
            for path in tmp_path.iterdir():
                if is_shard_name(path.name):
                    try:
                        seen[path.name] = pq.read_table(path).num_rows
                    except Exception as error:  # a partial file fails to parse
                        failures.append(f"{path.name}: {error}")
            if finished:
                return

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        for shard in range(shards):
            # Incompressible text, so each shard is tens of kilobytes.
            batch = rows(shard * rows_per_file, rows_per_file)
            noise = [os.urandom(1500).hex() for _ in range(rows_per_file)]
            writer.write(batch.set_column(1, "output", pa.array(noise)))
    finally:
        done.set()
        reader.join()
    assert not failures, failures[:3]
    assert len(seen) == shards and set(seen.values()) == {rows_per_file}
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_atomic_bytes_leave_no_temp_file(tmp_path: Path):
    write_bytes_atomically(pafs.LocalFileSystem(), str(tmp_path / "sub" / "report.json"), b"{}")
    assert [path.name for path in (tmp_path / "sub").iterdir()] == ["report.json"]


def test_shards_on_s3_are_single_whole_objects(s3_server):
    bucket = s3_server.create_bucket()
    filesystem = s3_server.filesystem()
    writer = ShardWriter(filesystem, f"{bucket}/out", "run-s3", 5)
    writer.write(rows(0, 12))
    writer.flush()
    infos = filesystem.get_file_info(pafs.FileSelector(f"{bucket}/out", recursive=True))
    names = sorted(info.path.rsplit("/", 1)[1] for info in infos if info.type == pafs.FileType.File)
    assert names == sorted(path.rsplit("/", 1)[1] for path in writer.shards)
    assert sorted(existing_output(filesystem, f"{bucket}/out").ids.to_pylist()) == rows(0, 12).column("id").to_pylist()
