"""The whole job with S3 in and S3 out, against a real S3 server (SeaweedFS, tests/s3_server.py).

The shipped ``jobs/captions-s3.yaml`` is run unchanged except for ``--set``
overrides, the way a user reruns a job on other data: the input is reached
through the standard AWS environment variables alone, the output through
per-job ``storage_options`` (credentials included, which the project allows but
must then keep out of everything it writes and prints).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.job_file import load_job
from pipeline.report import REPORT_NAME
from pipeline.runner import run_job
from pipeline.sample_data import IMAGE_TYPE, image_rows
from tests.conftest import ACCELERATOR

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ["tests.s3_server"]

JOB_FILE = Path(__file__).resolve().parents[2] / "jobs" / "captions-s3.yaml"
BROKEN_ID = "s3img-0003"
# The session cluster (tests/conftest.py) has a fake accelerator per node; it was
# started before any AWS variable was set, so its workers never see them.
CLUSTER_OVERRIDES = (
    f"resources.accelerator_resource={ACCELERATOR}",
    "resources.cpus_per_worker=0",
    "resources.gpus_per_worker=0",
)


def _worker_environment(ray_cluster) -> dict[str, str | None]:
    import ray

    @ray.remote(num_cpus=0, resources={ACCELERATOR: 1})
    def read_environment() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in ("AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY")}

    return ray.get(read_environment.remote())


def _ray_session_files() -> dict[str, str]:
    """Every file of the Ray session this process is connected to: its logs (driver,
    workers, raylets, GCS), its runtime-env and spill folders."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.is_dir()
    files = {}
    for path in session.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                files[f"Ray session file {path}"] = path.read_bytes().decode("latin-1")
            except OSError:  # sockets and files that vanish while we read
                continue
    assert any("worker" in name for name in files), sorted(files)[:20]  # the logs are there
    return files


def _upload_input(server: S3Server, bucket: str) -> list[str]:
    """Two Parquet shards of generated images under ``in/``; one row's bytes are broken and
    three rows hold only a relative path to an image object beside the shards."""
    rows = image_rows(12, np.random.default_rng(11), "s3img")
    rows[3]["image"]["bytes"] = b"not an image at all"
    filesystem = server.filesystem()
    for row in rows[-3:]:
        name = f"images/{row['id']}.png"
        with filesystem.open_output_stream(f"{bucket}/in/{name}") as stream:
            stream.write(row["image"]["bytes"])
        row["image"] = {"bytes": None, "path": name}
    schema = pa.schema([("id", pa.string()), ("image", IMAGE_TYPE)])
    for shard, part in enumerate((rows[:7], rows[7:])):
        table = pa.table({"id": [r["id"] for r in part], "image": [r["image"] for r in part]}, schema=schema)
        pq.write_table(table, f"{bucket}/in/part-{shard}.parquet", filesystem=filesystem)
    return [row["id"] for row in rows]


def _objects_under(filesystem: pafs.FileSystem, prefix: str) -> dict[str, bytes]:
    infos = filesystem.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    contents = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with filesystem.open_input_stream(info.path) as stream:
                contents[info.path] = stream.read()
    return contents


def _read_output(filesystem: pafs.FileSystem, objects: dict[str, bytes]) -> pa.Table:
    shards = sorted(path for path in objects if path.endswith(".parquet"))
    assert shards, f"no Parquet shards in the output: {sorted(objects)}"
    return pa.concat_tables(pq.read_table(path, filesystem=filesystem) for path in shards)


def test_job_reads_and_writes_s3_and_leaks_no_credentials(
    ray_cluster, s3_server: S3Server, s3_env, capfd
):
    bucket = s3_server.create_bucket()
    input_ids = _upload_input(s3_server, bucket)
    output_uri = f"s3://{bucket}/out/"
    overrides = [
        *CLUSTER_OVERRIDES,
        f"input.path=s3://{bucket}/in/",
        f"output.path={output_uri}",
        f"output.storage_options.endpoint_url={s3_server.endpoint_url}",
        f"output.storage_options.access_key={s3_server.access_key}",
        f"output.storage_options.secret_key={s3_server.secret_key}",
        "output.rows_per_file=5",
        "generation.max_new_tokens=4",
    ]
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url  # the input's only route
    # The workers lack the AWS environment, so the job only passes if the driver's
    # configuration travels with the work (the relative image paths are read there).
    assert _worker_environment(ray_cluster)["AWS_ENDPOINT_URL"] is None

    report = run_job(load_job(JOB_FILE, overrides), job_file=str(JOB_FILE))

    independent = s3_server.filesystem()  # read back without pipeline.storage
    objects = _objects_under(independent, f"{bucket}/out")
    output = _read_output(independent, objects)
    ids = output.column("id").to_pylist()
    assert sorted(ids) == sorted(input_ids) and len(ids) == len(set(ids))
    status = dict(zip(ids, output.column("status").to_pylist()))
    assert status[BROKEN_ID] == "error"
    assert all(value == "ok" for row_id, value in status.items() if row_id != BROKEN_ID), status
    assert all(text for text in output.filter(pc.equal(output["status"], "ok"))["output"].to_pylist())

    report_key = f"{bucket}/out/{REPORT_NAME}"
    assert report_key in objects
    stored_report = json.loads(objects[report_key])
    assert stored_report["counts"]["ok"] == len(input_ids) - 1
    assert stored_report["counts"]["error"] == 1
    assert stored_report["counts"] == report["counts"]

    # A rerun resumes from what is on S3: nothing left to do, each id still once.
    rerun = run_job(load_job(JOB_FILE, overrides), job_file=str(JOB_FILE))
    assert rerun["counts"]["skipped_by_resume"] == len(input_ids)
    assert rerun["counts"]["processed"] == 0
    objects = _objects_under(independent, f"{bucket}/out")
    rerun_ids = _read_output(independent, objects).column("id").to_pylist()
    assert sorted(rerun_ids) == sorted(input_ids)

    printed = capfd.readouterr()
    secrets = (s3_server.access_key, s3_server.secret_key)
    places = {path: data.decode("latin-1") for path, data in objects.items()}
    places["returned report"] = json.dumps([report, rerun], default=str)
    places["stdout"], places["stderr"] = printed.out, printed.err
    places.update(_ray_session_files())
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a credential appears in {place}"
    assert stored_report["job"]["output"]["storage_options"]["secret_key"] == "***"


def test_unreadable_input_fails_with_a_clear_message(
    ray_cluster, s3_server: S3Server, s3_env, monkeypatch
):
    from pipeline.errors import JobError

    bucket = s3_server.create_bucket()
    _upload_input(s3_server, bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-value")
    spec = load_job(
        JOB_FILE,
        [*CLUSTER_OVERRIDES, f"input.path=s3://{bucket}/in/", f"output.path=s3://{bucket}/out/"],
    )
    with pytest.raises(JobError) as caught:
        run_job(spec)
    message = str(caught.value)
    assert "input.path" in message and "a-wrong-secret-value" not in message
    # pipeline.storage.explain_storage_error's wording: says what to check, not just the AWS code.
    assert "rejected the credentials" in message and "AWS_SECRET_ACCESS_KEY" in message
