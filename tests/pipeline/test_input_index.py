"""The input index: which rows are left, where they sit, and which ids are duplicates.

The reference is a plain Python walk over the rows in file order; the index must name
the same rows to do (by file, row group and offset), the same duplicates and stand-ins,
and leave out the row groups whose rows are all done, so a resume reads no media of
finished work. A real run on an input with duplicate ids writes each as an error row
under its stand-in, and a rerun finds every row done.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.input_index import DUPLICATE_MARK, index_input
from pipeline.job_file import load_job
from pipeline.runner import run_job
from tests.conftest import CAPTIONS_JOB
from tests.pipeline.test_e2e import png
from tests.pipeline.test_system_faults import OVERRIDES


def _write(folder: Path, files: list[list[list[str]]]) -> list[str]:
    """Parquet files of row groups of ids (with a dummy media column)."""
    paths = []
    for number, groups in enumerate(files):
        path = folder / f"part-{number}.parquet"
        schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
        with pq.ParquetWriter(path, schema) as writer:
            for ids in groups:
                writer.write_table(pa.table({"id": ids, "image": [b"x" * 10] * len(ids)}, schema))
        paths.append(str(path))
    return paths


def _reference(files: list[list[list[str]]], done: set[str], limit: int | None):
    """(file, row group, offset) -> written id, for the rows to do; and the duplicates' ids."""
    seen: Counter = Counter()
    todo, duplicates, count = {}, [], 0
    for file_number, groups in enumerate(files):
        for group_number, ids in enumerate(groups):
            for offset, row_id in enumerate(ids):
                if limit is not None and count >= limit:
                    return todo, duplicates
                count += 1
                seen[row_id] += 1
                written = row_id if seen[row_id] == 1 else f"{row_id}{DUPLICATE_MARK}{seen[row_id]}"
                if seen[row_id] > 1:
                    duplicates.append(written)
                if written not in done:
                    todo[(file_number, group_number, offset)] = written
    return todo, duplicates


id_values = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"])
layouts = st.lists(st.lists(st.lists(id_values, min_size=1, max_size=5), min_size=1, max_size=3),
                   min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(layout=layouts, done_picks=st.lists(st.integers(0, 30), max_size=10),
       limit=st.one_of(st.none(), st.integers(1, 40)))
def test_index_matches_a_walk_of_the_rows(tmp_path_factory, layout, done_picks, limit):
    folder = tmp_path_factory.mktemp("input")
    paths = _write(folder, layout)
    all_written = list(_reference(layout, set(), None)[0].values())
    done = {all_written[pick % len(all_written)] for pick in done_picks}
    expected_todo, expected_duplicates = _reference(layout, done, limit)

    index = index_input(pafs.LocalFileSystem(), paths, "id", pa.array(sorted(done), pa.string()),
                        limit)

    found = {}
    for fragment in index.fragments:
        file_number = paths.index(fragment.path)
        group_size = len(layout[file_number][fragment.row_group])
        offsets = range(group_size) if fragment.offsets is None else fragment.offsets.tolist()
        for offset in offsets:
            original = layout[file_number][fragment.row_group][offset]
            stand_in = fragment.duplicates.get(offset, (original, None))[0]
            found[(file_number, fragment.row_group, offset)] = stand_in
    assert found == expected_todo
    assert index.to_process == len(expected_todo)
    assert index.duplicate_rows == len(expected_duplicates)
    assert index.input_rows == min(sum(len(ids) for groups in layout for ids in groups),
                                   limit if limit is not None else 10**9)


def test_a_resume_reads_only_the_row_groups_with_work(tmp_path: Path):
    groups = [[f"r{g}-{i}" for i in range(4)] for g in range(5)]
    paths = _write(tmp_path, [groups[:3], groups[3:]])
    done = pa.array([row_id for ids in groups[:4] for row_id in ids] + ["r4-1"], pa.string())
    index = index_input(pafs.LocalFileSystem(), paths, "id", done)
    (fragment,) = index.fragments
    assert (fragment.path, fragment.row_group) == (paths[1], 1)
    assert fragment.offsets.tolist() == [0, 2, 3]
    assert index.done_rows == 17 and index.to_process == 3


def test_duplicate_ids_become_error_rows_under_stand_ins(ray_cluster, tmp_path: Path):
    ids = ["a", "b", "a", "c", "b", "a"]
    data = tmp_path / "duplicates.parquet"
    pq.write_table(pa.table({"id": ids, "image": pa.array([png(i) for i in range(len(ids))])}),
                   data, row_group_size=4)
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}", f"output.path={output_dir}",
                                   f"ray.address={ray_cluster.address}"])
    report = run_job(spec)

    table = pq.read_table(output_dir, columns=["id", "status", "error_kind", "error"])
    rows = {row["id"]: row for row in table.to_pylist()}
    assert table.num_rows == len(rows) == len(ids)  # every written id once
    assert sorted(rows) == sorted(["a", "b", "c", "a#duplicate-2", "b#duplicate-2", "a#duplicate-3"])
    for row_id, row in rows.items():
        expected = "duplicate_id" if DUPLICATE_MARK in row_id else None
        assert row["error_kind"] == expected, row
    assert f"{data} row 0" in rows["a#duplicate-3"]["error"]  # where the first "a" is
    assert report["errors_by_kind"] == {"duplicate_id": 3}

    rerun = run_job(spec)
    assert rerun["counts"]["processed"] == 0 and rerun["counts"]["skipped_by_resume"] == len(ids)
