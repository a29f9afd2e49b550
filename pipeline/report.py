"""``.zipvl/report.json``: what a run did, written atomically into the output folder.

The report holds the job as run (credentials redacted), library versions,
row counts (ok / error / skipped because a previous run already wrote them),
throughput, wall time, the per-layer mean kept ratio, error rows by kind, and
which workers (node, actor, device) generated how many rows. It sits in the
hidden ``.zipvl/`` folder of the output: every reader of the folder skips names
starting with ``.``, while Hugging Face ``datasets`` reads an ``_``-prefixed file
as Parquet and fails.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from pipeline.output import write_bytes_atomically
from pipeline.retries import DEFAULT_ATTEMPTS

# Relative to the output folder.
REPORT_NAME = ".zipvl/report.json"
# One report per run, by run id: "state" says running, finished, interrupted or failed.
RUNS_DIR = ".zipvl/runs"
_VERSIONED_PACKAGES = ("zipvl-batch", "torch", "transformers", "ray", "pyarrow", "pillow", "av")
_MAX_ERROR_SAMPLES = 20


def report_path(output_directory: str) -> str:
    """Where the report of an output folder lives (a path inside the output file system)."""
    return posixpath.join(output_directory, REPORT_NAME)


def versions() -> dict[str, str | None]:
    """Python and the versions of the libraries that decide a run's results."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


@dataclass
class ActorTiming:
    """One generate actor's time: its model load and the batches it ran."""

    model_load_seconds: float = 0.0
    batches: int = 0
    batch_seconds: float = 0.0
    generating_seconds: float = 0.0
    first_batch_started: float | None = None
    last_batch_finished: float | None = None

    def add_batch(self, model_load: float, batch: float, generating: float, started: float,
                  finished: float) -> None:
        self.model_load_seconds = max(self.model_load_seconds, model_load)
        self.batches += 1
        self.batch_seconds += batch
        self.generating_seconds += generating
        self.first_batch_started = min(started, self.first_batch_started or started)
        self.last_batch_finished = max(finished, self.last_batch_finished or finished)

    def to_dict(self) -> dict[str, Any]:
        span = ((self.last_batch_finished or 0.0) - (self.first_batch_started or 0.0))
        return {
            "model_load_seconds": self.model_load_seconds,
            "batches": self.batches,
            "batch_seconds": self.batch_seconds,
            "generating_seconds": self.generating_seconds,
            "first_batch_started": self.first_batch_started,
            "last_batch_finished": self.last_batch_finished,
            # How much of its first-to-last-batch span the model spent generating:
            # the figure that says whether decoding or the driver starves it.
            "generating_fraction_of_span": self.generating_seconds / span if span > 0 else None,
        }


@dataclass
class RunTally:
    """Everything the driver counts while rows stream in, for the report."""

    ok: int = 0
    error: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    kept_ratio_layer_sums: np.ndarray | None = None
    kept_ratio_rows: int = 0
    rows_by_node: Counter = field(default_factory=Counter)
    rows_by_actor: Counter = field(default_factory=Counter)
    devices: dict[str, str] = field(default_factory=dict)
    timing_by_actor: dict[str, ActorTiming] = field(default_factory=dict)
    error_samples: list[dict[str, str]] = field(default_factory=list)
    errors_by_kind: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return self.ok + self.error

    def add_kept_ratios(self, layer_sums: np.ndarray | None, rows: int) -> None:
        if layer_sums is None or rows == 0:
            return
        if self.kept_ratio_layer_sums is None:
            self.kept_ratio_layer_sums = np.zeros_like(layer_sums)
        self.kept_ratio_layer_sums = self.kept_ratio_layer_sums + layer_sums
        self.kept_ratio_rows += rows

    def add_error_sample(self, row_id: str, message: str, kind: str | None) -> None:
        self.errors_by_kind[kind or "unknown"] += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append({"id": row_id, "error": message, "kind": kind})

    def per_layer_kept_ratio(self) -> list[float] | None:
        if self.kept_ratio_layer_sums is None or not self.kept_ratio_rows:
            return None
        return (self.kept_ratio_layer_sums / self.kept_ratio_rows).tolist()


def build_report(
    *,
    job: dict[str, Any],
    job_file: str | None,
    run_id: str,
    output_uri: str,
    shards: list[str],
    tally: RunTally,
    input_rows: int,
    skipped_by_resume: int,
    wall_time_seconds: float,
    started_at: str,
    finished_at: str | None,
    state: str = "finished",
) -> dict[str, Any]:
    """The report as a JSON-ready mapping; `state` is ``running`` while the run goes on."""
    per_layer = tally.per_layer_kept_ratio()
    seconds = max(wall_time_seconds, 1e-9)
    return {
        "run_id": run_id,
        "job_file": job_file,
        "job": job,
        "versions": versions(),
        "state": state,
        "started_at": started_at,
        "finished_at": finished_at,
        "wall_time_seconds": wall_time_seconds,
        "counts": {
            "input_rows": input_rows,
            "skipped_by_resume": skipped_by_resume,
            "processed": tally.rows,
            "ok": tally.ok,
            "error": tally.error,
        },
        "errors_by_kind": dict(tally.errors_by_kind.most_common()),
        "throughput": {
            "rows_per_second": tally.rows / seconds,
            "output_tokens_per_second": tally.output_tokens / seconds,
            "prompt_tokens": tally.prompt_tokens,
            "output_tokens": tally.output_tokens,
        },
        "kept_ratio": None
        if per_layer is None
        else {"mean": float(np.mean(per_layer)), "per_layer": per_layer, "rows": tally.kept_ratio_rows},
        "output": {"path": output_uri, "report": REPORT_NAME, "shards_written": shards},
        "workers": {
            "rows_by_node": dict(tally.rows_by_node),
            "rows_by_actor": dict(tally.rows_by_actor),
            "device_by_actor": dict(tally.devices),
            "timing_by_actor": {actor: timing.to_dict()
                                for actor, timing in tally.timing_by_actor.items()},
        },
        "error_samples": tally.error_samples,
    }


def run_report_path(output_directory: str, run_id: str) -> str:
    """Where one run's own report lives: rewritten while it runs, kept after it ends."""
    return posixpath.join(output_directory, RUNS_DIR, f"{run_id}.json")


def write_report(filesystem: pafs.FileSystem, output_directory: str, report: dict[str, Any],
                 finished: bool = True, attempts: int = DEFAULT_ATTEMPTS) -> str:
    """Write `report` atomically as its run's report, and as the output's when `finished`
    (each write tried up to `attempts` times through transient storage failures)."""
    data = json.dumps(report, indent=2, sort_keys=False, default=str).encode()
    write_bytes_atomically(filesystem, run_report_path(output_directory, report["run_id"]), data,
                           attempts)
    if not finished:
        return run_report_path(output_directory, report["run_id"])
    path = report_path(output_directory)
    write_bytes_atomically(filesystem, path, data, attempts)
    return path
