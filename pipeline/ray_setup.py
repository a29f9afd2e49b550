"""Connect to Ray (or start a private local one) and set Ray Data up for a run.

On a private local Ray, ``warm_task_workers`` starts the read and decode tasks' worker
processes while the model actors start (Ray Data starts no task before every actor is
up), so the first rows do not wait another process start and its imports after them.

Ray Data's settings are process-wide (``DataContext``, logger levels, one environment
variable): ``ray_data_settings`` applies them for the run and puts the previous
values back afterwards, so a test or a notebook that runs a job keeps its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import JobError

# Ray Data's own progress lines duplicate ours.
_QUIET_LOGGERS = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")
# Seconds to wait for all generate actors to start (model downloads count).
ACTOR_START_TIMEOUT_ENV = "ZIPVL_BATCH_ACTOR_START_TIMEOUT_S"


@dataclass(frozen=True)
class RayConnection:
    """How this run reached Ray: whether it connected (and so disconnects at the end),
    and whether the cluster was there before it (`joined`) rather than a private one it
    started (see ``worker_resources`` and ``storage_access``)."""

    connected_here: bool
    joined: bool


def ensure_ray(spec: Any) -> RayConnection:
    """Connect to (or start) Ray as the job says."""
    import ray

    if ray.is_initialized():  # the caller connected: to a cluster, as far as we know
        return RayConnection(connected_here=False, joined=True)
    address = spec.ray.address or os.environ.get("RAY_ADDRESS") or None
    common = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **common)
        return RayConnection(connected_here=True, joined=True)
    # "local" always starts a private Ray: a bare ray.init() would join whichever
    # Ray was last started on this machine (someone else's job, say).
    ray.init(address="local", num_cpus=spec.ray.num_cpus,
             resources=dict(spec.ray.resources) or None, **common)
    return RayConnection(connected_here=True, joined=False)


@dataclass(frozen=True)
class WorkerResources:
    """What each generate actor asks Ray for."""

    num_gpus: float
    num_cpus: float
    resources: dict[str, float]


def worker_resources(spec: Any, joined_cluster: bool = False) -> WorkerResources:
    """Resolve ``gpus_per_worker: auto`` and check that the cluster can place a worker.

    ``auto`` is 1 GPU where the cluster has GPUs. Where it has none, a private local Ray
    (a laptop, the demo) runs on CPU; a cluster that was joined (`joined_cluster`) is an
    error instead: its GPU nodes are down or not yet up, and a 10M-row job silently run
    on CPU would take months. ``gpus_per_worker: 0`` asks for CPU explicitly.
    """
    import ray

    cluster = ray.cluster_resources()
    requested = spec.resources.gpus_per_worker
    if requested == "auto" and cluster.get("GPU", 0) < 1 and joined_cluster:
        raise JobError("resources.gpus_per_worker: auto, but the Ray cluster this job joined has "
                       "no GPU (are its GPU nodes down, or still starting?); wait for them, or "
                       "set resources.gpus_per_worker: 0 to run on CPU")
    gpus = (1.0 if cluster.get("GPU", 0) >= 1 else 0.0) if requested == "auto" else float(requested)
    workers = spec.resources.workers
    # A joined cluster may grow (autoscaling) to hold every worker; a private one never does.
    needed_gpus = gpus if joined_cluster else gpus * workers
    if gpus > 0 and cluster.get("GPU", 0) < needed_gpus:
        raise JobError(f"resources.gpus_per_worker: {workers} worker(s) x {gpus:g} GPU(s), but "
                       f"the Ray cluster has {cluster.get('GPU', 0):g}")
    resources: dict[str, float] = {}
    accelerator = spec.resources.accelerator_resource
    if accelerator:
        if cluster.get(accelerator, 0) < 1:
            raise JobError(f"resources.accelerator_resource: the Ray cluster has no {accelerator!r} "
                           f"resource (it has: {', '.join(sorted(cluster))})")
        if not joined_cluster and cluster[accelerator] < workers:
            raise JobError(f"resources.accelerator_resource: {workers} worker(s) need one "
                           f"{accelerator!r} each, but the Ray cluster has {cluster[accelerator]:g}")
        resources[accelerator] = 1.0
    cpus_per_worker = float(spec.resources.cpus_per_worker)
    spare_cpus = cluster.get("CPU", 0) - workers * cpus_per_worker
    if spare_cpus < 1:
        # Reading and decoding run as 1-CPU tasks: with no CPU left over they never get
        # scheduled and the job would wait forever.
        raise JobError(
            f"resources: {spec.resources.workers} worker(s) x cpus_per_worker "
            f"{cpus_per_worker:g} leave {max(spare_cpus, 0):g} of the cluster's "
            f"{cluster.get('CPU', 0):g} CPU(s) for reading and decoding (at least 1 is "
            "needed); lower resources.cpus_per_worker (e.g. 0.5) or resources.workers")
    return WorkerResources(gpus, cpus_per_worker, resources)


# ------------------------------------------------------------------ the run

# What the read and decode tasks import (Ray Data's, pyarrow, PIL, the video decoder).
_TASK_MODULES = ("pipeline.input_source", "pipeline.stages")


def _import_task_modules() -> None:
    import importlib

    for name in _TASK_MODULES:
        importlib.import_module(name)


def warm_task_workers(count: int) -> None:
    """Start `count` Ray worker processes with the task modules imported, without waiting.

    Ray hands an idle worker of this job to the next task or actor that fits it (Ray
    2.60 also prestarts one idle worker per CPU as the driver connects, and actors take
    those too), so the read and decode tasks, which Ray Data starts only once every
    model actor is up, find a worker with their imports done instead of then waiting
    ~2 s for a process and its imports (measured ~1 s sooner to the first batch on a
    2-core node).
    They hold no Ray CPU, so they never keep an actor from being placed; nothing waits
    for them.
    """
    import ray

    warm = ray.remote(num_cpus=0, max_retries=0)(_import_task_modules)
    for _ in range(count):
        warm.remote()


def actor_start_timeout_s() -> int:
    """How long a run waits for its model actors to start before it fails (default 1 h:
    GPU nodes of an autoscaling cluster can take that long to come up)."""
    return int(os.environ.get(ACTOR_START_TIMEOUT_ENV, "3600"))


@contextlib.contextmanager
def ray_data_settings() -> Iterator[None]:
    """Ray Data settings for one job run from this driver, restored when it ends."""
    from ray.data import DataContext

    context = DataContext.get_current()
    # Start every generate actor (model loaded) before rows flow, so a cluster that
    # cannot place them fails with a message, not a hang. (Reading and decoding while
    # the actors load was measured slower on a 2-core node: they compete for the CPUs
    # the actors' imports need.)
    settings = {"enable_progress_bars": False, "print_on_execution_start": False,
                "wait_for_min_actors_s": actor_start_timeout_s()}
    saved_settings = {name: getattr(context, name) for name in settings}
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name, value in settings.items():
        setattr(context, name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if "executor" in name else logging.ERROR)
    try:
        yield
    finally:
        for name, value in saved_settings.items():
            setattr(context, name, value)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


# Ray Data's threads that make bounded Ray calls and end once their iterator is closed
# (ray 2.60: the streaming executor, the batch-format workers of block_batching/util.py,
# the metadata fetcher of execution/metadata_fetcher.py). Its block "Prefetcher" thread
# is left out: it parks for good on a condition once no blocks are queued, and only the
# format workers queue them.
DATASET_THREAD_PREFIXES = ("StreamingExecutor-", "iter_threaded", "ray-data-metadata-prefetch")


def wait_for_dataset_threads(timeout_s: float = 60.0) -> None:
    """Wait until Ray Data's executor and worker threads in this process have ended.

    Closing an iterator stops them but joins the executor for only 2 s and the others not
    at all. On a loaded machine one can outlive that and reach into Ray after
    ``ray.shutdown``, and Ray then ends the process with exit code 1, hiding the job's
    own exit code (seen in CI: a too-many-errors job, then a Ctrl-C'd one, exited 1
    instead of 3 and 130).
    """
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if (thread.name.startswith(DATASET_THREAD_PREFIXES)
                and thread is not threading.current_thread()):
            thread.join(max(0.0, deadline - time.monotonic()))
