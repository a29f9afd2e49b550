"""A node lost mid-job: the job finishes on the node that is left, every id once.

The cluster is a private two-node ``ray.cluster_utils.Cluster`` (one ``gpu_slot`` per
node, so each model actor sits on its own node) in a child process: the session's
cluster must keep both nodes for the other tests. After the first shard the worker node
is removed, as a spot reclaim would take it: its raylet and every process on it die.
Its actor cannot be restarted anywhere (the only other slot is taken), so the job must
go on with the one actor left, and its lost batches must be redone there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.sample_data import DEFAULT_DIR
from tests.conftest import ACCELERATOR, CAPTIONS_JOB

ROWS = 24

SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile, time
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.job_file import load_job
    from pipeline.runner import run_job

    output, job, accelerator, rows = sys.argv[1:5]
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)
    node = {"num_cpus": 1, "resources": {accelerator: 1}, "object_store_memory": 256 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "temp_dir": tempfile.mkdtemp(prefix="ray-"), "include_dashboard": False})
    worker = cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    spec = load_job(job, [f"output.path={output}", f"ray.address={cluster.address}",
                          f"resources.accelerator_resource={accelerator}", "resources.workers=2",
                          "resources.cpus_per_worker=0", "resources.gpus_per_worker=0",
                          "resources.batch_size=2", "output.rows_per_file=2",
                          "generation.max_new_tokens=4", "zipvl=dense", f"input.limit={rows}"])
    removed = []

    def after_shard(shards):
        if shards >= 1 and not removed:
            cluster.remove_node(worker)
            removed.append(time.monotonic())

    try:
        report = run_job(spec, after_shard=after_shard)
        print("REPORT " + json.dumps({"counts": report["counts"], "removed": bool(removed),
                                      "rows_by_node": report["workers"]["rows_by_node"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_the_job_finishes_on_the_node_left(tmp_path: Path):
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(output), str(CAPTIONS_JOB),
                           ACCELERATOR, str(ROWS)], capture_output=True, text=True, timeout=420,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["removed"]
    expected = pq.read_table(DEFAULT_DIR / "images.parquet", columns=["id"]).column("id")
    expected = sorted(expected.to_pylist()[:ROWS])
    ids = pq.read_table(output, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == expected  # every id once: none lost with the node, none twice
    assert report["counts"]["processed"] == ROWS
