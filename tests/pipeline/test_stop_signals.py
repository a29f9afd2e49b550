"""SIGTERM and SIGINT sent from outside stop a real run gracefully; a rerun resumes.

The ``zipvl-batch`` process runs against the session cluster; as soon as its first
shard appears, the test sends it a real signal with ``os.kill``, as a spot reclaim,
``ray job stop`` or a Ctrl-C in a terminal would. Each run must exit with its
documented code (143 for SIGTERM, 130 for SIGINT) after flushing the rows it had
finished. Then a shard is truncated, as a machine crash before the data reached
the disk would leave it: the rerun moves it aside, redoes its rows, and every
input id is in the output exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cli import EXIT_INTERRUPTED, EXIT_TERMINATED
from pipeline.output import QUARANTINE_DIR
from pipeline.sample_data import DEFAULT_DIR
from tests.conftest import read_output
from tests.pipeline.test_resume import ROWS_PER_FILE, run_cli, shard_ids

STOP_TIMEOUT_S = 120


def stopped_by(signal_number: int, output_dir: Path, address: str) -> subprocess.CompletedProcess:
    """Start the job, send `signal_number` once its first shard is written, wait for the exit."""
    command = run_cli(output_dir, address, command_only=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = set(shard_ids(output_dir)) if output_dir.exists() else set()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if output_dir.exists() and set(shard_ids(output_dir)) - before:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be stopped"
    os.kill(process.pid, signal_number)
    stdout, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_sigterm_and_sigint_from_outside_flush_and_a_rerun_finishes_each_id_once(
        ray_cluster, tmp_path: Path):
    output_dir = tmp_path / "out"
    input_ids = pq.read_table(DEFAULT_DIR / "images.parquet", columns=["id"]).column("id").to_pylist()

    terminated = stopped_by(signal.SIGTERM, output_dir, ray_cluster.address)
    assert terminated.returncode == EXIT_TERMINATED, terminated.stderr[-3000:]
    assert "terminated (SIGTERM)" in terminated.stderr
    after_term = shard_ids(output_dir)
    assert after_term and all(0 < len(ids) <= ROWS_PER_FILE for ids in after_term.values())
    # Only whole shards are visible, and no report: the job did not finish.
    assert sorted(p.name for p in output_dir.iterdir() if not p.name.startswith(".")) \
        == sorted(after_term)
    assert not (output_dir / ".zipvl" / "report.json").exists()

    interrupted = stopped_by(signal.SIGINT, output_dir, ray_cluster.address)
    assert interrupted.returncode == EXIT_INTERRUPTED, interrupted.stderr[-3000:]
    after_int = shard_ids(output_dir)
    assert set(after_term) < set(after_int)
    done = [row_id for ids in after_int.values() for row_id in ids]
    assert len(done) == len(set(done)) < len(input_ids)

    # A crash before the data reached the disk: a shard cut short.
    victim = output_dir / sorted(after_int)[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    finished = run_cli(output_dir, ray_cluster.address)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "cannot be read as Parquet" in finished.stderr
    assert (output_dir / QUARANTINE_DIR / victim.name).exists()
    assert not victim.exists()
    assert sorted(read_output(output_dir).column("id").to_pylist()) == sorted(input_ids)

