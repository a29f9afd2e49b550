"""A row that kills its worker process becomes an error row instead of being retried forever.

Ray retries a task whose worker died (a segfault in a decoder, a host OOM kill, a
CUDA abort) and restarts a dead actor, without limit in Ray Data's defaults. A
row that kills every worker it lands on would stall the job for good. The stages
therefore bound Ray's retries (``MAX_ATTEMPTS``) and keep a ledger in a small
named Ray actor, one per run: a batch is registered before it is processed, and
finished after. A batch seen again unfinished was running when its worker died,
so it is retried one row at a time, each row registered first; a row that was
the one in progress when a worker died ``DEATHS_FOR_ERROR`` times is written as
an error row (``worker_died``) and the rest of the batch goes on. A death that no
row explains (the worker dies on every row, or at start-up) uses up Ray's
retries and stops the job (exit 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

# Ray retries of a batch (task retries, actor restarts): the first try, the retry that
# goes row by row, and one retry per row found guilty, with room to spare.
MAX_ATTEMPTS = 8
DEATHS_FOR_ERROR = 2
WORKER_DIED_KIND = "worker_died"


class CrashLedger:
    """The Ray actor's class: batches in progress and the rows that were running at deaths."""

    def __init__(self) -> None:
        self.in_progress: dict[str, str | None] = {}  # batch key -> row in progress (or None)
        self.deaths: dict[str, int] = {}  # row id -> deaths it was in progress for

    def begin_batch(self, key: str) -> dict[str, int] | None:
        """None for a batch never seen unfinished; else the rows' death counts so far."""
        if key not in self.in_progress:
            self.in_progress[key] = None
            return None
        row = self.in_progress[key]
        if row is not None:
            self.deaths[row] = self.deaths.get(row, 0) + 1
        self.in_progress[key] = None
        return dict(self.deaths)

    def begin_row(self, key: str, row_id: str) -> None:
        self.in_progress[key] = row_id

    def end_batch(self, key: str) -> None:
        self.in_progress.pop(key, None)


def start_ledger(run_id: str) -> tuple[str, Any]:
    """Start this run's ledger actor; returns its name (for the stages) and its handle."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"zipvl-crash-ledger-{run_id}"
    # On the driver's own node: a worker node lost mid-job (a spot reclaim) must not take
    # the ledger with it, and when the driver's node goes the job goes anyway.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = ray.remote(num_cpus=0, max_restarts=0)(CrashLedger).options(
        name=name, scheduling_strategy=here).remote()
    return name, handle


def batch_key(row_ids: Sequence[str | None]) -> str:
    """The same key for the same rows however often Ray retries their batch."""
    return hashlib.sha256("\x00".join(str(row) for row in row_ids).encode()).hexdigest()


def guarded(ledger_name: str | None, stage: str, row_ids: Sequence[str | None],
            process: Callable[[list[int]], list[Any]],
            died_on: Callable[[int, int], Any]) -> list[Any]:
    """``process(indices)`` for the whole batch, or row by row after a worker died on it.

    `process` returns one result per index given; `died_on(index, deaths)` makes the
    error result of a row that killed its worker. Without a ledger (tests of one stage
    outside a run) the batch is simply processed.
    """
    everything = list(range(len(row_ids)))
    if ledger_name is None:
        return process(everything)
    import ray

    ledger = ray.get_actor(ledger_name)
    names = [f"{stage}:{row}" for row in row_ids]
    key = batch_key(names)
    deaths = ray.get(ledger.begin_batch.remote(key))
    if deaths is None:
        results = process(everything)
    else:
        results = []
        for index, name in enumerate(names):
            count = deaths.get(name, 0)
            if count >= DEATHS_FOR_ERROR:
                results.append(died_on(index, count))
                continue
            ray.get(ledger.begin_row.remote(key, name))
            results.extend(process([index]))
    ledger.end_batch.remote(key)
    return results
