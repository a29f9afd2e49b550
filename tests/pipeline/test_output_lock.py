"""One run at a time per output folder, locally and on a real S3 server (SeaweedFS).

Leases are taken through the stores the pipeline uses (a local file with
``O_EXCL``, an S3 object with ``If-None-Match``); a live holder is refused with
its name, a dead or lapsed one is taken over, and a run whose lease was taken
over stops. Two real ``zipvl-batch`` processes started on one output: the second
refuses, the first finishes, every id once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.job_file import load_job
from pipeline.output_lock import (
    LOCK_NAME,
    LocalLeaseStore,
    LockLost,
    OutputLock,
    OutputLocked,
    S3LeaseStore,
)
from pipeline.runner import run_job
from pipeline.sample_data import DEFAULT_DIR
from pipeline.storage import s3_client
from tests.conftest import CAPTIONS_JOB, read_output
from tests.pipeline.test_resume import run_cli
from tests.pipeline.test_system_faults import OVERRIDES

pytest_plugins = ["tests.s3_server"]


def lease(run_id: str, *, host: str | None = None, pid: int = 1, age: float = 0.0,
          ttl: float = 60.0) -> bytes:
    now = time.time()
    return json.dumps({"run_id": run_id, "host": host or socket.gethostname(), "pid": pid,
                       "started_at": now - age, "heartbeat_at": now - age,
                       "ttl_seconds": ttl}).encode()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    """The pid of another live process on this host (a holder that is still running)."""
    process = subprocess.Popen(["sleep", "300"])
    yield process.pid
    process.kill()
    process.wait()


def stores(tmp_path: Path, s3_server) -> dict:
    bucket = s3_server.create_bucket()
    client = s3_client(s3_server.storage_options())
    return {"local": LocalLeaseStore(str(tmp_path / "out" / LOCK_NAME)),
            "s3": S3LeaseStore(client, bucket, f"out/{LOCK_NAME}")}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_live_holder_is_refused_and_a_dead_or_lapsed_one_taken_over(kind, tmp_path, s3_server,
                                                                      live_pid):
    store = stores(tmp_path, s3_server)[kind]
    assert store.create(lease("holder", pid=live_pid)) is not None  # alive, fresh
    assert store.create(lease("second")) is None  # the conditional create refuses
    with pytest.raises(OutputLocked, match=r"another run holder \(host .*, pid \d+"):
        OutputLock(store, "me", 60.0, "the output").acquire()

    for stale in (lease("crashed", pid=dead_pid()),  # this host, process gone
                  lease("lapsed", host="elsewhere", age=120.0),  # other host, heartbeat old
                  # this very process, but no lock of it holds this run: an earlier run
                  # whose release failed (storage down)
                  lease("earlier-run-here", pid=os.getpid())):
        data, token = store.read()
        assert store.replace(stale, token) is not None
        lock = OutputLock(store, "me", 60.0, "the output")
        lock.acquire()
        assert json.loads(store.read()[0])["run_id"] == "me"
        lock.release()
        assert store.read() is None  # released: nothing left behind
        assert store.create(lease("holder", pid=live_pid)) is not None


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_run_whose_lease_was_taken_over_stops(kind, tmp_path, s3_server):
    store = stores(tmp_path, s3_server)[kind]
    lock = OutputLock(store, "slow", 0.4, "the output")
    lock.acquire()
    lock.check()  # still ours
    # The holder's heartbeat renews every 0.1 s: a renewal between the read and the
    # replace makes the token stale, so try again, as a real taker would.
    for _ in range(50):
        _, token = store.read()
        if store.replace(lease("taker", host="elsewhere"), token) is not None:
            break
    else:
        pytest.fail("the lease could not be replaced")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            lock.check()
        except LockLost as lost:
            assert "taken over by run taker (host elsewhere" in str(lost)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the heartbeat did not notice the takeover")
    lock.release()
    assert json.loads(store.read()[0])["run_id"] == "taker"  # the taker's lease is left alone


def test_run_job_refuses_a_held_output_and_leaves_its_temp_files(ray_cluster, tmp_path, live_pid):
    output_dir = tmp_path / "out"
    (output_dir / ".zipvl").mkdir(parents=True)
    (output_dir / LOCK_NAME).write_bytes(lease("the-other-run", pid=live_pid))
    temp = output_dir / ".part-the-other-run-00000.parquet.tmp"
    temp.write_bytes(b"being written")
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"output.path={output_dir}", "input.limit=2"])
    with pytest.raises(OutputLocked, match="being written by another run the-other-run"):
        run_job(spec)
    assert temp.read_bytes() == b"being written"
    assert not list(output_dir.glob("part-*"))


def test_two_real_runs_on_one_output_the_second_refuses(ray_cluster, tmp_path):
    output_dir = tmp_path / "out"
    first = subprocess.Popen(run_cli(output_dir, ray_cluster.address, command_only=True),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output_dir / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second started"
    second = run_cli(output_dir, ray_cluster.address)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 1, second.stderr[-2000:]
    assert "is being written by another run" in second.stderr
    assert first.returncode == 0, err[-2000:]
    input_ids = pq.read_table(DEFAULT_DIR / "images.parquet", columns=["id"]).column("id").to_pylist()
    assert sorted(read_output(output_dir).column("id").to_pylist()) == sorted(input_ids)
    assert not (output_dir / LOCK_NAME).exists()
