"""The sample job on a two-node cluster: one actor per node (each pinned to its ``gpu_slot``).

The session cluster (``tests/conftest.py``) is a head plus a worker node made
with ``ray.cluster_utils.Cluster``, each holding one ``gpu_slot``; the job asks
for two workers with ``accelerator_resource: gpu_slot``, so Ray can only place
them one per node. The report records which node and actor generated each row.

Which actor a batch goes to is Ray Data's choice: it prefers the actor beside
the block while that actor has room, and otherwise the least busy one. With the
tiny model a batch is generated faster than the next one is decoded on a 2-core
machine, so one actor can legitimately take every batch of the shared sample run
(CI saw it). The placement test therefore gives each batch a fixed generation
time (a real stage whose model sleeps after generating), so batches queue on the first
actor and Ray Data must hand the rest to the other node.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from ray import cloudpickle

from pipeline.job_file import load_job
from pipeline.runner import run_job
from pipeline.stages import GenerateStage
from tests.conftest import CAPTIONS_JOB, SAMPLE_OVERRIDES, JobRun, RayCluster

# Far longer than decoding a 2-row batch of small images, even on a loaded 2-core machine.
SECONDS_PER_BATCH = 0.5
ROWS = 16

# The Ray workers cannot import the tests package: ship this module's classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowGenerateStage(GenerateStage):
    """The real stage whose model takes at least ``SECONDS_PER_BATCH`` per ``generate``, as a big one would."""

    def __init__(self, spec, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        generate = self.loaded.model.generate

        def slow_generate(*args, **kwargs):
            started = time.monotonic()
            output = generate(*args, **kwargs)
            time.sleep(max(0.0, SECONDS_PER_BATCH - (time.monotonic() - started)))
            return output

        self.loaded.model.generate = slow_generate


def test_rows_are_generated_on_both_nodes(ray_cluster: RayCluster, tmp_path: Path):
    output = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [*SAMPLE_OVERRIDES, f"output.path={output}",
                                   f"input.limit={ROWS}", "generation.max_new_tokens=4"])
    report = run_job(spec, generate_stage=SlowGenerateStage)
    workers = report["workers"]
    assert len(ray_cluster.node_ids) == 2
    assert set(workers["rows_by_node"]) == set(ray_cluster.node_ids)
    assert all(count > 0 for count in workers["rows_by_node"].values())
    assert len(workers["rows_by_actor"]) == 2
    rows = sum(pq.read_table(path).num_rows for path in output.glob("part-*.parquet"))
    assert sum(workers["rows_by_actor"].values()) == rows == ROWS


def test_the_report_times_each_actor_s_batches(ray_cluster: RayCluster, tmp_path: Path):
    """The timings the stage reports hold the time its model was given: >= SECONDS_PER_BATCH a batch."""
    output = tmp_path / "out"
    batch_size = 2
    spec = load_job(CAPTIONS_JOB, [*SAMPLE_OVERRIDES, f"output.path={output}", "input.limit=6",
                                   f"resources.batch_size={batch_size}", "resources.workers=1",
                                   "generation.max_new_tokens=2"])
    report = run_job(spec, generate_stage=SlowGenerateStage)
    (actor, timing), = report["workers"]["timing_by_actor"].items()
    assert report["workers"]["rows_by_actor"] == {actor: 6}
    assert timing["batches"] == 6 // batch_size
    assert timing["generating_seconds"] >= SECONDS_PER_BATCH * timing["batches"]
    assert timing["generating_seconds"] < timing["batch_seconds"]
    assert timing["model_load_seconds"] > 0
    span = timing["last_batch_finished"] - timing["first_batch_started"]
    assert span >= timing["batch_seconds"] - 1e-3
    assert timing["generating_fraction_of_span"] == timing["generating_seconds"] / span


def test_the_report_accounts_for_every_row_of_the_sample_run(sample_caption_run: JobRun,
                                                            ray_cluster: RayCluster):
    workers = sample_caption_run.report["workers"]
    assert set(workers["rows_by_node"]) <= set(ray_cluster.node_ids)
    assert sum(workers["rows_by_node"].values()) == sample_caption_run.table.num_rows
    assert 1 <= len(workers["rows_by_actor"]) <= 2
    assert sum(workers["rows_by_actor"].values()) == sample_caption_run.table.num_rows
    assert set(workers["device_by_actor"].values()) == {"cpu"}
