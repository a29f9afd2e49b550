"""The output folder opens in the readers people use, and they all see the same rows.

The reference is the shards read one by one with ``pyarrow.parquet`` (``read_output``);
each reader is pointed at the *folder*, as users do, so the run metadata in
``.zipvl/`` must not trip any of them (Hugging Face ``datasets`` reads an
``_``-prefixed file as Parquet and fails).
"""

from __future__ import annotations

import datasets
import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import JobRun, read_output

COLUMNS = ["id", "status", "output", "error", "error_kind"]


def as_rows(records) -> list[tuple]:
    return sorted(tuple(record[name] for name in COLUMNS) for record in records)


@pytest.fixture(scope="module")
def reference(sample_caption_run: JobRun) -> list[tuple]:
    rows = as_rows(read_output(sample_caption_run.output_dir).to_pylist())
    assert len(rows) == 40 and {row[1] for row in rows} == {"ok", "error"}
    return rows


def test_pyarrow_reads_the_folder(sample_caption_run, reference):
    folder = sample_caption_run.output_dir
    assert as_rows(pq.read_table(folder).to_pylist()) == reference
    assert as_rows(ds.dataset(folder, format="parquet").to_table().to_pylist()) == reference


def test_pandas_reads_the_folder(sample_caption_run, reference):
    frame = pd.read_parquet(sample_caption_run.output_dir)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert as_rows(records) == reference


def test_hugging_face_datasets_reads_the_folder(sample_caption_run, reference, tmp_path):
    loaded = datasets.load_dataset("parquet", data_dir=str(sample_caption_run.output_dir),
                                   split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert as_rows(loaded) == reference


def test_duckdb_and_polars_read_the_shards(sample_caption_run, reference):
    pattern = str(sample_caption_run.output_dir / "*.parquet")
    connection = duckdb.connect()
    cursor = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM read_parquet('{pattern}')")
    assert sorted(cursor.fetchall()) == reference
    assert as_rows(pl.read_parquet(pattern).to_dicts()) == reference
