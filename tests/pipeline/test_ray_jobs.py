"""A scheduled cluster job the way Ray users run one: ``ray job submit``, ``ray job stop``,
and the same submission again.

A real head (``ray start --head --block``, with the dashboard's job server from
``ray[default]``) runs in its own process group with ports of its own, beside the
session's cluster. The job is submitted with the ``ray`` command line; it is held
after its first shard (a test seam), stopped with ``ray job stop`` (SIGTERM to the
entrypoint), which must flush the finished rows and leave the run marked
interrupted; the same submission then finishes the job: every id exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.fault_injection import PAUSE_AFTER_SHARDS_ENV
from pipeline.report import RUNS_DIR
from pipeline.sample_data import DEFAULT_DIR
from tests.conftest import ACCELERATOR, CAPTIONS_JOB
from tests.s3_server import _free_ports

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SAMPLE = DEFAULT_DIR / "images.parquet"
# The job server waits this long after SIGTERM before it kills the job (Ray's default is
# 3 s); the README tells users to set it the same way.
STOP_WAIT_S = 60


@pytest.fixture(scope="module")
def job_server():
    """A Ray head with a job server; yields its dashboard URL. Stopped (only it) after."""
    gcs, dashboard, *other = _free_ports(8)
    temp_dir = tempfile.mkdtemp(prefix="rayjob-")  # socket paths have a length limit
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
                   "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    environment.pop("RAY_ADDRESS", None)
    command = [str(RAY), "start", "--head", "--block", f"--port={gcs}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--ray-client-server-port={other[0]}",
               f"--dashboard-agent-listen-port={other[1]}", f"--dashboard-agent-grpc-port={other[2]}",
               f"--metrics-export-port={other[3]}", f"--runtime-env-agent-port={other[4]}",
               f"--node-manager-port={other[5]}", "--num-cpus=2",
               f"--resources={json.dumps({ACCELERATOR: 1})}", f"--temp-dir={temp_dir}",
               "--disable-usage-stats"]
    head = subprocess.Popen(command, env=environment, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the job server did not come up"
                time.sleep(1)
        yield url, environment
    finally:
        # The head's processes share the group of `ray start --block`; a graceful Ray stop
        # takes half a minute, and nothing of this head is worth keeping.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)


def _ray(environment: dict, *arguments: str) -> str:
    done = subprocess.run([str(RAY), *arguments], env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def _submit(url: str, environment: dict, output_dir: Path, extra_env: dict[str, str]) -> str:
    runtime_env = {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), **extra_env}}
    overrides = [f"input.path={SAMPLE}", f"output.path={output_dir}", "output.rows_per_file=4",
                 f"resources.accelerator_resource={ACCELERATOR}", "resources.workers=1",
                 "resources.cpus_per_worker=0", "resources.gpus_per_worker=0",
                 "resources.batch_size=2", "generation.max_new_tokens=4", "zipvl=dense"]
    printed = _ray(environment, "job", "submit", "--address", url, "--no-wait",
                   "--runtime-env-json", json.dumps(runtime_env), "--",
                   "zipvl-batch", "run", str(CAPTIONS_JOB),
                   *(part for override in overrides for part in ("--set", override)))
    (job_id,) = set(re.findall(r"raysubmit_[A-Za-z0-9]+", printed))
    return job_id


def _wait_for(predicate, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value


def _final_status(url: str, job_id: str) -> str:
    """The job's status once it has ended (the job server's own client, not its prose)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url)
    return _wait_for(lambda: (status := client.get_job_status(job_id)).is_terminal()
                     and status.value, f"job {job_id} to end", timeout=300) or JobStatus.FAILED.value


def _logs(url: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url).get_job_logs(job_id)


def test_submit_stop_and_resubmit_a_job(job_server, tmp_path: Path):
    url, environment = job_server
    output_dir = tmp_path / "out"
    expected = pq.read_table(SAMPLE, columns=["id"]).column("id").to_pylist()

    held = _submit(url, environment, output_dir, {PAUSE_AFTER_SHARDS_ENV: "1"})
    _wait_for(lambda: list(output_dir.glob("part-*.parquet")), "the first shard")
    _ray(environment, "job", "stop", "--address", url, held)
    assert _final_status(url, held) == "STOPPED"
    logs = _logs(url, held)
    assert "terminated (SIGTERM)" in logs and "row(s) saved, rerun to resume" in logs, logs[-3000:]
    # Stopped gracefully: the shards are whole, the run says it was interrupted, and it
    # wrote fewer than all the rows.
    stopped_ids = [row_id for path in output_dir.glob("part-*.parquet")
                   for row_id in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    assert 0 < len(stopped_ids) < len(expected) and len(set(stopped_ids)) == len(stopped_ids)
    (run_report,) = (output_dir / RUNS_DIR).iterdir()
    assert json.loads(run_report.read_text())["state"] == "interrupted"

    again = _submit(url, environment, output_dir, {})
    assert _final_status(url, again) == "SUCCEEDED", _logs(url, again)[-3000:]
    table = pq.read_table(output_dir, columns=["id", "status"])
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert set(table.column("status").to_pylist()) <= {"ok", "error"}
