"""``make demo``'s last step passes on a real demo output and fails on a doctored one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.demo_check import problems
from tests.conftest import JobRun


def test_the_sample_run_passes(sample_caption_run: JobRun):
    assert problems(sample_caption_run.output_dir) == []


def test_error_rows_for_good_images_duplicates_and_gaps_are_caught(sample_caption_run: JobRun,
                                                                  tmp_path: Path):
    doctored = tmp_path / "out"
    shutil.copytree(sample_caption_run.output_dir, doctored)
    shards = sorted(doctored.glob("part-*.parquet"))
    first = pq.read_table(shards[0])
    good_id = next(row["id"] for row in first.to_pylist() if row["status"] == "ok")
    as_error = pc.if_else(pc.equal(first.column("id"), good_id), "error", first.column("status"))
    pq.write_table(first.set_column(first.schema.get_field_index("status"), "status", as_error),
                   shards[0])
    pq.write_table(pq.read_table(shards[1]).slice(0, 1), doctored / "part-copy-00000.parquet")
    last = pq.read_table(shards[-1])
    missing_id = last.column("id")[0].as_py()
    pq.write_table(last.slice(1), shards[-1])
    duplicate_id = pq.read_table(shards[1]).column("id")[0].as_py()

    found = "\n".join(problems(doctored))
    assert f"id {good_id}: status error, expected ok" in found
    assert f"id {duplicate_id} appears 2 times" in found
    assert f"id {missing_id} is missing" in found
    empty = tmp_path / "empty-captions"
    shutil.copytree(sample_caption_run.output_dir, empty)
    for shard in empty.glob("part-*.parquet"):
        table = pq.read_table(shard)
        blank = pa.array(["  " if text is not None else None
                          for text in table.column("output").to_pylist()], pa.string())
        pq.write_table(table.set_column(table.schema.get_field_index("output"), "output", blank),
                       shard)
    assert any("the caption is empty" in line for line in problems(empty))
