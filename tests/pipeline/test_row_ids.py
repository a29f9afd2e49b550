"""Every id type is written and matched in one string form, so resume never duplicates.

The reference for the canonical form is Arrow's own cast (and UTF-8 decoding for
binary); the resume filter and the decode stage are checked against it for each
input type, and a real run on float ids is stopped after a shard and resumed: each
id once. A null id is refused before the job runs.
"""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.input_index import index_input
from pipeline.job_file import load_job
from pipeline.preflight import validate_job
from pipeline.row_ids import HEX_PREFIX, canonical_ids
from pipeline.runner import run_job
from pipeline.stages import DecodeStage
from tests.conftest import CAPTIONS_JOB
from tests.pipeline.test_e2e import png
from tests.pipeline.test_system_faults import OVERRIDES

ID_COLUMNS = {
    "int64": (pa.array([1, 22, -3]), ["1", "22", "-3"]),
    "float64": (pa.array([1.0, 2.5, 3.0]), ["1", "2.5", "3"]),
    "binary": (pa.array([b"x", b"\xff\x00", b"caf\xc3\xa9"]), ["x", HEX_PREFIX + "ff00", "café"]),
    "timestamp": (pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5)]), ["2024-01-02 03:04:05.000000"]),
    "bool": (pa.array([True, False]), ["true", "false"]),
    "string": (pa.array(["a", "b"]), ["a", "b"]),
}


@pytest.mark.parametrize("kind", sorted(ID_COLUMNS))
def test_decode_stage_and_resume_index_spell_ids_alike(kind, tmp_path: Path):
    values, expected = ID_COLUMNS[kind]
    assert canonical_ids(values).to_pylist() == expected
    batch = pa.table({"key": values, "img": pa.array([png(0)] * len(values))})
    written = DecodeStage(id_column="key", image_column="img")(batch).column("id")
    assert written.to_pylist() == expected
    # Resume: the ids as the output holds them (strings) leave exactly the other rows to do.
    pq.write_table(batch, tmp_path / "input.parquet")
    index = index_input(pafs.LocalFileSystem(), [str(tmp_path / "input.parquet")], "key",
                        done_ids=written.slice(0, 1))
    assert index.done_rows == 1 and index.to_process == len(values) - 1
    rest = list(range(1, len(values)))
    assert [fragment.offsets.tolist() for fragment in index.fragments] == ([rest] if rest else [])


def test_float_ids_resume_without_duplicates(ray_cluster, tmp_path: Path):
    data = tmp_path / "float-ids.parquet"
    ids = [float(index) for index in range(6)]
    pq.write_table(pa.table({"id": ids, "image": pa.array([png(i) for i in range(6)])}), data)
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}", f"output.path={output_dir}",
                                   "output.rows_per_file=2", f"ray.address={ray_cluster.address}"])
    run_job(spec)
    first = sorted(output_dir.glob("part-*.parquet"))
    first[0].unlink()  # as if the run had stopped before this shard
    report = run_job(spec)
    assert report["counts"]["processed"] == 2 and report["counts"]["skipped_by_resume"] == 4
    table = pq.read_table(output_dir, columns=["id"])
    assert Counter(table.column("id").to_pylist()) == Counter(canonical_ids(pa.array(ids)).to_pylist())


def test_a_null_id_is_refused_before_the_job_runs(tmp_path: Path):
    data = tmp_path / "null-id.parquet"
    pq.write_table(pa.table({"id": ["a", None, "c"], "image": pa.array([png(i) for i in range(3)])}),
                   data)
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}",
                                   f"output.path={tmp_path / 'out'}"])
    problems = validate_job(spec)
    assert any(line.startswith("input.columns.id: 1 row(s) have a null id") for line in problems)
