"""Shared fixtures: one Ray cluster for the whole session, and one run of the sample job.

The cluster is a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``): a head and a worker node, each with one CPU
and one ``gpu_slot``, a custom resource that stands in for an accelerator so
the actor pool is placed exactly as it would be on GPUs. Every end-to-end test
therefore runs across two raylets. Ray writes its session files into a short
temporary folder of its own (socket paths have a length limit) and runs
without auth tokens in the home folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Nothing in the tests may reach a hub (CI has no network): fail instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTIONS_JOB = REPO_ROOT / "jobs" / "captions.yaml"
ACCELERATOR = "gpu_slot"
# No auth token in the home folder; no usage reporting (tests have no network).
_RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}


@dataclass(frozen=True)
class RayCluster:
    """The session's cluster: its GCS address (for other drivers) and its node ids."""

    address: str
    node_ids: tuple[str, ...]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A two-node Ray cluster (1 CPU + 1 ``gpu_slot`` per node) with this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    previous = {name: os.environ.get(name) for name in _RAY_ENVIRONMENT}
    os.environ.update(_RAY_ENVIRONMENT)
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    # Cluster records the head's address in the default temp folder whatever temp_dir
    # says, and fails where no Ray ever ran on the machine (a fresh CI runner).
    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
    node_args = {"num_cpus": 1, "resources": {ACCELERATOR: 1}, "object_store_memory": 256 * 1024**2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "temp_dir": temp_dir, "include_dashboard": False},
    )
    try:
        cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        if ray.is_initialized():  # a Ray another test left connected
            ray.shutdown()
        ray.init(address=cluster.address, logging_level="WARNING")
        node_ids = tuple(node["NodeID"] for node in ray.nodes() if node["Alive"])
        yield RayCluster(address=cluster.address, node_ids=node_ids)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def _release_failed_runs_actors(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that ran jobs on the cluster, collect the garbage of failed runs.

    Ray Data releases a run's generate actors by reference count. A failed run's
    exception chain (Ray's error, its traceback, the executor's frames) is a reference
    cycle that ``pytest.raises`` leaves for the cyclic collector, and until it runs the
    actors keep their ``gpu_slot``: a later two-worker job would wait for a slot that
    never frees. (A ``zipvl-batch`` process exits after a failure, so users never see it.)
    """
    yield
    if "ray_cluster" in request.fixturenames:
        import gc

        gc.collect()


def read_output(directory: Path) -> pa.Table:
    """All finished shards of an output folder, read without the pipeline's code."""
    shards = sorted(path for path in directory.iterdir() if path.name.startswith("part-"))
    assert shards, f"no shards in {directory}"
    return pa.concat_tables(pq.read_table(path) for path in shards)


@dataclass(frozen=True)
class JobRun:
    """A finished run: the spec, the report run_job returned, and the output it wrote."""

    spec: Any
    report: dict
    output_dir: Path
    table: pa.Table


# The shipped sample, spread over both nodes: two actors pinned to one gpu_slot each.
# Small batches of long generations make generating slower than decoding, so the
# actor next to the decoded blocks fills up and the other node gets work too (Ray
# Data prefers the actor on the node that holds a block while it has room).
SAMPLE_OVERRIDES = (
    "resources.workers=2",
    f"resources.accelerator_resource={ACCELERATOR}",
    "resources.cpus_per_worker=0",
    "resources.gpus_per_worker=0",
    "resources.batch_size=2",
    "output.rows_per_file=8",
    "generation.max_new_tokens=24",
    # Sparse enough that the tiny model's ~45-token prompts really lose tokens.
    "zipvl.tau=0.9",
    "zipvl.keep_last=4",
    "zipvl.num_recent_probes=8",
    "zipvl.num_random_probes=8",
)


@pytest.fixture(scope="session")
def sample_caption_run(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> JobRun:
    """``jobs/captions.yaml`` (tiny LLaVA) on the shipped sample, run once for the session."""
    from pipeline.job_file import load_job
    from pipeline.runner import run_job

    output_dir = tmp_path_factory.mktemp("sample-captions") / "out"
    spec = load_job(CAPTIONS_JOB, [*SAMPLE_OVERRIDES, f"output.path={output_dir}"])
    report = run_job(spec, job_file=str(CAPTIONS_JOB))
    return JobRun(spec=spec, report=report, output_dir=output_dir, table=read_output(output_dir))
