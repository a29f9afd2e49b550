"""``zipvl-batch status`` on a local output, during a real run and after it.

The references are the output itself (its shards, read with pyarrow) and the
running process (its pid holds the lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.fault_injection import PAUSE_AFTER_SHARDS_ENV
from pipeline.sample_data import DEFAULT_DIR
from tests.conftest import read_output
from tests.pipeline.test_resume import CLI, run_cli, shard_ids


def status_of(output_dir: Path) -> dict:
    result = subprocess.run([str(CLI), "status", str(output_dir), "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def rows_in_shards(output_dir: Path) -> int:
    return sum(len(ids) for ids in shard_ids(output_dir).values())


def test_status_during_and_after_a_run(ray_cluster, tmp_path: Path):
    output_dir = tmp_path / "out"
    # The run holds still after its first shard (the pause hook), so its status is read
    # while it surely runs (a run left free can finish, release its lock and still be
    # shutting Ray down when the read lands); SIGTERM then stops it, as a spot reclaim
    # would, and a rerun finishes the job.
    process = subprocess.Popen(run_cli(output_dir, ray_cluster.address, command_only=True),
                               env={**os.environ, PAUSE_AFTER_SHARDS_ENV: "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output_dir.exists() and shard_ids(output_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    during = status_of(output_dir)
    assert process.poll() is None, "the run ended before its status was read"
    assert during["lock"]["pid"] == process.pid and not during["lock"]["stale"]
    assert during["rows_done"] == rows_in_shards(output_dir) >= 1
    assert [run["state"] for run in during["runs"]] == ["running"]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]

    stopped = status_of(output_dir)
    assert stopped["lock"] is None and stopped["rows_done"] == rows_in_shards(output_dir)
    assert [run["state"] for run in stopped["runs"]] == ["interrupted"]
    finished = run_cli(output_dir, ray_cluster.address)
    assert finished.returncode == 0, finished.stderr[-2000:]

    after = status_of(output_dir)
    input_rows = pq.read_metadata(DEFAULT_DIR / "images.parquet").num_rows
    table = read_output(output_dir)
    assert after["rows_done"] == table.num_rows == input_rows
    assert after["rows_remaining"] == 0 and after["input_rows"] == input_rows
    assert after["ok"] == table.column("status").to_pylist().count("ok")
    assert after["lock"] is None
    first, run = after["runs"]
    assert first["state"] == "interrupted" and run["state"] == "finished"
    assert first["processed"] + run["processed"] == input_rows
    text = subprocess.run([str(CLI), "status", str(output_dir)], capture_output=True, text=True,
                          timeout=120).stdout
    assert f"rows:   {input_rows} done" in text and "lock:   free" in text
