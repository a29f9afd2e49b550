"""A broken system stops the job; broken rows do not, unless there are too many of them.

A ``generate`` that fails for every batch (what transformers 5.24 did to the
previous release, or a CUDA error) is injected through the runner's
``generate_stage`` seam into a real run on the session's two-node cluster: the
job must fail naming the error, write none of the rows it could not answer, and a
healthy rerun on the same output must finish every row ok, each id once. A
dataset of only corrupt images must exit 3 through the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray import cloudpickle

from pipeline.errors import JobError
from pipeline.job_file import load_job
from pipeline.runner import run_job
from pipeline.stages import GenerateStage
from tests.conftest import ACCELERATOR, CAPTIONS_JOB
from tests.pipeline.test_e2e import png

CLI = Path(sys.executable).with_name("zipvl-batch")
FAULT = "CUDA error: an illegal memory access was encountered"
OVERRIDES = (
    f"resources.accelerator_resource={ACCELERATOR}",
    "resources.workers=1",
    "resources.cpus_per_worker=0",
    "resources.gpus_per_worker=0",
    "resources.batch_size=2",
    "output.rows_per_file=3",
    "generation.max_new_tokens=4",
)

# The Ray workers cannot import the tests package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FailingGenerateStage(GenerateStage):
    """The real stage with a model whose ``generate`` dies as a broken GPU would."""

    def __init__(self, spec, **kwargs) -> None:
        super().__init__(spec, **kwargs)

        def broken_generate(*args, **kwargs):
            raise RuntimeError(FAULT)

        self.loaded.model.generate = broken_generate


def write_images(path: Path, cells: list) -> list[str]:
    ids = [f"row-{index:02d}" for index in range(len(cells))]
    image_type = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    pq.write_table(pa.table({"id": ids, "image": pa.array(cells, type=image_type)}), path)
    return ids


def test_a_failing_generate_stops_the_job_and_a_rerun_finishes_it(ray_cluster, tmp_path: Path):
    ids = write_images(tmp_path / "good.parquet",
                       [{"bytes": png(seed), "path": None} for seed in range(7)])
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={tmp_path / 'good.parquet'}",
                                   f"output.path={output_dir}", f"ray.address={ray_cluster.address}"])

    with pytest.raises(JobError, match="illegal memory access") as failure:
        run_job(spec, generate_stage=FailingGenerateStage)
    assert "rerun to resume" in str(failure.value)
    written = [path for path in output_dir.glob("part-*.parquet")]
    assert written == [], "rows the system could not answer must not be written as finished"

    report = run_job(spec)
    table = pq.read_table(output_dir, columns=["id", "status", "output"])
    assert Counter(table.column("id").to_pylist()) == Counter(ids)  # each id exactly once
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert all(text.strip() for text in table.column("output").to_pylist())
    assert report["counts"]["ok"] == len(ids) and report["counts"]["skipped_by_resume"] == 0


def test_a_dataset_of_only_corrupt_images_exits_3(ray_cluster, tmp_path: Path):
    cells = [{"bytes": b"not an image at all" * (index + 1), "path": None} for index in range(30)]
    write_images(tmp_path / "corrupt.parquet", cells)
    output_dir = tmp_path / "out"
    overrides = [*OVERRIDES, f"input.path={tmp_path / 'corrupt.parquet'}",
                 f"output.path={output_dir}", f"ray.address={ray_cluster.address}"]
    command = [str(CLI), "run", str(CAPTIONS_JOB), *(arg for o in overrides for arg in ("--set", o))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=420)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "max_error_fraction 0.1" in result.stderr
    assert "Most frequent: media" in result.stderr
    # It failed fast: the error rows are certain to exceed the budget after the first
    # few, long before all 30 are done; what was finished is written, each id once.
    table = pq.read_table(output_dir, columns=["id", "status", "error_kind"])
    assert 0 < table.num_rows < len(cells)
    assert set(table.column("status").to_pylist()) == {"error"}
    assert set(table.column("error_kind").to_pylist()) == {"media"}
    assert len(set(table.column("id").to_pylist())) == table.num_rows

    # A rerun counts the error rows already written: over budget before it starts, it
    # refuses at once rather than grinding through the rest, and writes nothing more.
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=420)
    assert rerun.returncode == 3, rerun.stderr[-3000:]
    assert f"{table.num_rows} of the job's {len(cells)} rows are error rows" in rerun.stderr
    assert pq.read_table(output_dir).num_rows == table.num_rows

    # Raising the budget lets it finish: every id once, the summary counting by kind.
    allowed = subprocess.run([*command, "--set", "output.max_error_fraction=1"],
                             capture_output=True, text=True, timeout=420)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    remaining = len(cells) - table.num_rows
    assert f"0 ok, {remaining} error(s) (media {remaining})" in allowed.stderr
    assert f"errors: media {remaining}" in allowed.stdout
    final = pq.read_table(output_dir, columns=["id"]).column("id").to_pylist()
    assert sorted(final) == sorted(f"row-{index:02d}" for index in range(len(cells)))


class DyingOnceGenerateStage(GenerateStage):
    """The real stage whose process dies (as a segfault or host OOM kill would) in its
    first batch, once per job: a marker file beside the input says it already died."""

    def __call__(self, batch):
        marker = Path(self.spec.input.path).with_suffix(".died")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


def test_a_model_actor_killed_mid_batch_is_restarted_and_each_id_is_written_once(
        ray_cluster, tmp_path: Path):
    data = tmp_path / "good.parquet"
    ids = write_images(data, [{"bytes": png(seed), "path": None} for seed in range(6)])
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}", f"output.path={output_dir}",
                                   f"ray.address={ray_cluster.address}"])
    report = run_job(spec, generate_stage=DyingOnceGenerateStage)
    assert data.with_suffix(".died").exists()  # it did die
    table = pq.read_table(output_dir, columns=["id", "status"])
    assert Counter(table.column("id").to_pylist()) == Counter(ids)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert report["counts"]["ok"] == len(ids)


POISON_ID = "row-03"


class PoisonRowGenerateStage(GenerateStage):
    """The real stage whose process dies (as a segfault would) whenever it generates POISON_ID."""

    def _results(self, rows):
        if any(row["id"] == POISON_ID for row in rows):
            os._exit(1)
        return super()._results(rows)


def test_a_row_that_kills_its_worker_every_time_becomes_an_error_row(ray_cluster, tmp_path: Path):
    data = tmp_path / "good.parquet"
    ids = write_images(data, [{"bytes": png(seed), "path": None} for seed in range(6)])
    assert POISON_ID in ids
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"input.path={data}", f"output.path={output_dir}",
                                   f"ray.address={ray_cluster.address}",
                                   "output.max_error_fraction=0.5"])  # 1 of 6 rows
    report = run_job(spec, generate_stage=PoisonRowGenerateStage)
    table = pq.read_table(output_dir, columns=["id", "status", "error", "error_kind"])
    assert Counter(table.column("id").to_pylist()) == Counter(ids)
    rows = {row["id"]: row for row in table.to_pylist()}
    assert rows[POISON_ID]["error_kind"] == "worker_died"
    assert "died 2 times while generating this row" in rows[POISON_ID]["error"]
    assert all(row["status"] == "ok" for row_id, row in rows.items() if row_id != POISON_ID)
    assert report["errors_by_kind"] == {"worker_died": 1}


def test_the_crash_ledger_blames_the_row_in_progress_at_each_death():
    from pipeline.crash_ledger import CrashLedger

    ledger = CrashLedger()
    assert ledger.begin_batch("b") is None  # first try: the whole batch
    assert ledger.begin_batch("b") == {}  # it died, nobody to blame yet: go row by row
    ledger.begin_row("b", "x")
    ledger.begin_row("b", "y")  # x finished, y in progress when the worker died
    assert ledger.begin_batch("b") == {"y": 1}
    ledger.begin_row("b", "y")
    assert ledger.begin_batch("b") == {"y": 2}
    ledger.end_batch("b")
    assert ledger.begin_batch("b") is None  # a finished batch starts clean


def test_actors_that_cannot_all_start_fail_the_job_with_what_to_do(ray_cluster, tmp_path: Path):
    """Three model actors on a cluster with two accelerator slots: the third never starts.

    Through the command line: the actors that did start live until their driver exits.
    """
    from pipeline.ray_setup import ACTOR_START_TIMEOUT_ENV

    overrides = [*OVERRIDES, "resources.workers=3", "input.limit=4",
                 f"output.path={tmp_path / 'out'}", f"ray.address={ray_cluster.address}"]
    done = subprocess.run(
        [str(Path(sys.executable).with_name("zipvl-batch")), "run", str(CAPTIONS_JOB),
         *(part for override in overrides for part in ("--set", override))],
        env={**os.environ, ACTOR_START_TIMEOUT_ENV: "5"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert (f"did not start the 3 model actor(s) this job asks for within 5 s "
            f"({ACTOR_START_TIMEOUT_ENV})") in done.stderr, done.stderr[-3000:]
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_cluster_joined_by_address_is_not_mistaken_for_a_private_ray(ray_cluster, tmp_path: Path):
    """`ray.address` from the command line joins the cluster: `gpus_per_worker: auto` on a
    cluster without GPUs is the joined-cluster error, not a quiet CPU run."""
    overrides = ["resources.workers=1", f"resources.accelerator_resource={ACCELERATOR}",
                 "input.limit=2", f"output.path={tmp_path / 'out'}",
                 f"ray.address={ray_cluster.address}"]
    done = subprocess.run(
        [str(Path(sys.executable).with_name("zipvl-batch")), "run", str(CAPTIONS_JOB),
         *(part for override in overrides for part in ("--set", override))],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "resources.gpus_per_worker: auto, but the Ray cluster this job joined has no GPU" \
        in done.stderr, done.stderr[-3000:]
