"""``--retry-errors`` redoes an output's error rows in place of the old ones, each id once.

The first run meets images that are not there yet (``missing_media`` error rows) and one
repeated id; the images then appear, and a run with ``retry_errors`` must turn exactly
those rows into captions, keep the other rows untouched (same shards' rows, same
captions) and leave the ``duplicate_id`` row as it was.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.job_file import load_job
from pipeline.runner import run_job
from tests.conftest import CAPTIONS_JOB
from tests.pipeline.test_e2e import png
from tests.pipeline.test_system_faults import OVERRIDES


def _rows(output_dir: Path) -> list[dict]:
    return pq.read_table(output_dir, columns=["id", "status", "error_kind", "output"]).to_pylist()


def test_retry_errors_redoes_only_the_error_rows(ray_cluster, tmp_path: Path):
    ids = ["a", "b", "c", "d", "e", "a"]
    late = {"b", "d"}  # their image files are written only after the first run
    cells = [{"bytes": None, "path": f"{row_id}.png"} if row_id in late
             else {"bytes": png(index), "path": None} for index, row_id in enumerate(ids)]
    data = tmp_path / "input"
    data.mkdir()
    pq.write_table(pa.table({"id": ids, "image": cells}), data / "part-0.parquet")
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}", f"output.path={output_dir}",
                                   "output.max_error_fraction=1", f"ray.address={ray_cluster.address}"])
    run_job(spec)
    first = {row["id"]: row for row in _rows(output_dir)}
    assert {row_id for row_id, row in first.items() if row["error_kind"] == "missing_media"} == late

    for index, row_id in enumerate(ids):
        if row_id in late:
            (data / f"{row_id}.png").write_bytes(png(index))
    report = run_job(spec, retry_errors=True)

    rows = _rows(output_dir)
    assert Counter(row["id"] for row in rows) == Counter(set(first))  # every id once, none lost
    after = {row["id"]: row for row in rows}
    assert report["counts"]["processed"] == len(late)
    for row_id in late:
        assert after[row_id]["status"] == "ok" and after[row_id]["output"], after[row_id]
    for row_id in set(first) - late:
        assert after[row_id] == first[row_id]  # untouched, the duplicate's error row included
    assert after["a#duplicate-2"]["error_kind"] == "duplicate_id"
