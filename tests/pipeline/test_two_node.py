"""The sample job on a two-node cluster: one actor per node (each pinned to its ``gpu_slot``).

The session cluster (``tests/conftest.py``) is a head plus a worker node made
with ``ray.cluster_utils.Cluster``, each holding one ``gpu_slot``; the job asks
for two workers with ``accelerator_resource: gpu_slot``, so Ray can only place
them one per node. The report records which node and actor generated each row.
"""

from __future__ import annotations

from tests.conftest import JobRun, RayCluster


def test_both_nodes_generate_rows(sample_caption_run: JobRun, ray_cluster: RayCluster):
    workers = sample_caption_run.report["workers"]
    assert len(ray_cluster.node_ids) == 2
    assert set(workers["rows_by_node"]) == set(ray_cluster.node_ids)
    assert all(count > 0 for count in workers["rows_by_node"].values())
    assert len(workers["rows_by_actor"]) == 2
    assert sum(workers["rows_by_actor"].values()) == sample_caption_run.table.num_rows
    assert set(workers["device_by_actor"].values()) == {"cpu"}
