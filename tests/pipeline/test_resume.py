"""Ctrl-C, then a crash, then the same command again: only missing ids are done, each once.

Every run goes through the real command line (``zipvl-batch run ... --set``) in
its own process, connected to the session's cluster. The pipeline's test hooks
stop a run at a known point with rows still in flight: the first run sends
itself SIGINT (Ctrl-C) after its first shard, the second SIGKILL (a hard
crash) after its first shard; the third runs to the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.fault_injection import CRASH_AFTER_SHARDS_ENV, INTERRUPT_AFTER_SHARDS_ENV
from pipeline.output_lock import LOCK_NAME
from pipeline.report import REPORT_NAME, RUNS_DIR
from pipeline.sample_data import DEFAULT_DIR
from tests.conftest import ACCELERATOR, CAPTIONS_JOB, read_output

ROWS_PER_FILE = 4
CLI = Path(sys.executable).with_name("zipvl-batch")


def run_cli(output_dir: Path, address: str, stop: tuple[str, int] | None = None,
            command_only: bool = False):
    """Run the job through the command line (or, with `command_only`, return its command)."""
    overrides = [
        f"output.path={output_dir}",
        f"output.rows_per_file={ROWS_PER_FILE}",
        f"ray.address={address}",
        "resources.workers=1",
        f"resources.accelerator_resource={ACCELERATOR}",
        "resources.cpus_per_worker=0",
        "resources.gpus_per_worker=0",
        "resources.batch_size=2",
        "generation.max_new_tokens=4",
        "zipvl=dense",
    ]
    environment = dict(os.environ)
    environment.pop(CRASH_AFTER_SHARDS_ENV, None)
    environment.pop(INTERRUPT_AFTER_SHARDS_ENV, None)
    if stop is not None:
        environment[stop[0]] = str(stop[1])
    command = [str(CLI), "run", str(CAPTIONS_JOB), *(arg for o in overrides for arg in ("--set", o))]
    if command_only:
        return command
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=420)


def shard_ids(output_dir: Path) -> dict[str, list[str]]:
    return {
        path.name: pq.read_table(path, columns=["id"]).column("id").to_pylist()
        for path in sorted(output_dir.iterdir())
        if path.name.startswith("part-")
    }


def test_rerun_after_ctrl_c_and_a_crash_does_only_the_missing_ids(ray_cluster, tmp_path: Path):
    output_dir = tmp_path / "out"
    interrupted = run_cli(output_dir, ray_cluster.address, stop=(INTERRUPT_AFTER_SHARDS_ENV, 1))
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    after_interrupt = shard_ids(output_dir)
    # Every visible file is a whole shard: the full one, plus the rows that had
    # finished when Ctrl-C came (flushed), if any. No report: the job did not finish (its
    # run report says so); and no lock left: the run released it.
    assert sorted(p.name for p in output_dir.iterdir() if p.name != ".zipvl") == sorted(after_interrupt)
    assert not (output_dir / REPORT_NAME).exists() and not (output_dir / LOCK_NAME).exists()
    (run_report,) = (output_dir / RUNS_DIR).iterdir()
    assert json.loads(run_report.read_text())["state"] == "interrupted"
    assert len(after_interrupt) in (1, 2)
    assert all(0 < len(ids) <= ROWS_PER_FILE for ids in after_interrupt.values())

    crashed = run_cli(output_dir, ray_cluster.address, stop=(CRASH_AFTER_SHARDS_ENV, 1))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    before_rerun = shard_ids(output_dir)
    assert set(after_interrupt) < set(before_rerun)
    assert len(before_rerun) == len(after_interrupt) + 1
    snapshot = {name: (output_dir / name).read_bytes() for name in before_rerun}
    done_before = [row_id for ids in before_rerun.values() for row_id in ids]
    assert len(done_before) == len(set(done_before))
    # A temp file as a crash in the middle of a write would leave it: cleaned, never read.
    (output_dir / ".part-crashed-00009.parquet.tmp").write_bytes(b"PAR1 half a shard")

    finished = run_cli(output_dir, ray_cluster.address)
    assert finished.returncode == 0, finished.stderr[-3000:]

    input_ids = pq.read_table(DEFAULT_DIR / "images.parquet", columns=["id"]).column("id").to_pylist()
    final_ids = read_output(output_dir).column("id").to_pylist()
    assert sorted(final_ids) == sorted(input_ids)  # every id, exactly once
    for name, data in snapshot.items():  # earlier shards are untouched
        assert (output_dir / name).read_bytes() == data
    report = json.loads((output_dir / REPORT_NAME).read_text())
    assert report["counts"]["input_rows"] == len(input_ids)
    assert report["counts"]["skipped_by_resume"] == len(done_before)
    assert report["counts"]["processed"] == len(input_ids) - len(done_before)
    new_ids = set()
    for name in report["output"]["shards_written"]:
        new_ids.update(pq.read_table(output_dir / name, columns=["id"]).column("id").to_pylist())
    assert new_ids == set(input_ids) - set(done_before)
    # No temporary file is left behind; the run metadata folder is the only hidden name.
    assert [path.name for path in output_dir.iterdir() if path.name.startswith(".")] == [".zipvl"]
