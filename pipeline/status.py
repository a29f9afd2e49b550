"""``zipvl-batch status OUTPUT``: what an output folder holds and who is writing it.

Read-only, from the output alone (local or ``s3://``), and usable while a job
runs: the finished shards' ``id``/``status``/``error_kind`` columns (rows done,
error rows by kind), the runs' own reports in ``.zipvl/runs/`` (each run's
state: running, finished, interrupted, failed, or stopped when it died without
saying; its wall time and rows/s; rows remaining against the job's input as the
latest run counted it), the lock (whether a run holds the folder now), and the
job's fingerprint (model, task).
"""

from __future__ import annotations

import posixpath
import time
from collections import Counter
from typing import Any

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.fingerprint import FINGERPRINT_NAME
from pipeline.output import filesystem_for, list_shards, read_json
from pipeline.output_lock import LOCK_NAME, parse_lease
from pipeline.report import RUNS_DIR


def output_status(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status of the output folder at `uri` as a JSON-ready mapping."""
    filesystem, directory = filesystem_for(uri, storage_options)
    done, errors, unreadable = 0, Counter(), []
    for path in list_shards(filesystem, directory):
        try:
            table = pq.read_table(path, columns=["status", "error_kind"], filesystem=filesystem)
        except Exception:  # noqa: BLE001 (a cut-short shard: the next run moves it aside)
            unreadable.append(posixpath.basename(path))
            continue
        done += table.num_rows
        failed = table.filter(pc.equal(table.column("status"), "error"))
        errors.update(kind or "unknown" for kind in failed.column("error_kind").to_pylist())
    runs = sorted(_runs(filesystem, directory), key=lambda run: run.get("started_at") or "")
    lock = _lock(filesystem, directory)
    for run in runs:
        # A run whose last report says "running" but that holds no live lock died before
        # it could say how it ended (SIGKILL, or its storage was down).
        if run.get("state") == "running" and (lock is None or lock["stale"]
                                              or lock["run_id"] != run.get("run_id")):
            run["state"] = "stopped"
    latest = runs[-1] if runs else None
    input_rows = (latest or {}).get("counts", {}).get("input_rows")
    return {
        "output": uri,
        "rows_done": done,
        "ok": done - sum(errors.values()),
        "error_rows_by_kind": dict(errors.most_common()),
        "rows_remaining": None if input_rows is None else max(0, input_rows - done),
        "input_rows": input_rows,
        "unreadable_shards": unreadable,
        "runs": [_run_line(run) for run in runs],
        "lock": lock,
        "job": _read_json(filesystem, posixpath.join(directory, FINGERPRINT_NAME)),
    }


def status_lines(status: dict[str, Any]) -> list[str]:
    """The status as the lines the command prints."""
    lines = [f"output: {status['output']}"]
    remaining = status["rows_remaining"]
    lines.append(f"rows:   {status['rows_done']} done ({status['ok']} ok, "
                 f"{status['rows_done'] - status['ok']} error)"
                 + ("" if remaining is None else f", {remaining} remaining of "
                                                 f"{status['input_rows']}"))
    if status["error_rows_by_kind"]:
        lines.append("errors: " + ", ".join(f"{kind} {count}"
                                            for kind, count in status["error_rows_by_kind"].items()))
    if status["unreadable_shards"]:
        lines.append(f"unreadable shards (the next run moves them aside): "
                     f"{', '.join(status['unreadable_shards'])}")
    lock = status["lock"]
    lines.append("lock:   " + ("free" if lock is None else
                               f"held by run {lock['run_id']} on {lock['host']} (pid {lock['pid']}, "
                               f"heartbeat {lock['heartbeat_age_seconds']:.0f} s ago"
                               f"{', stale' if lock['stale'] else ''})"))
    job = status["job"]
    if job:
        model = job["model"].get("preset") or job["model"].get("name_or_path")
        lines.append(f"job:    model {model}, task {job['task']['type']}: {job['task']['prompt']!r}")
    for run in status["runs"]:
        lines.append(f"run {run['run_id']}: {run['state']}, {run['processed']} row(s) in "
                     f"{run['wall_time_seconds']:.0f} s ({run['rows_per_second']:.2f} rows/s), "
                     f"started {run['started_at']}")
    return lines


def _runs(filesystem: pafs.FileSystem, directory: str) -> list[dict[str, Any]]:
    selector = pafs.FileSelector(posixpath.join(directory, RUNS_DIR), allow_not_found=True)
    reports = [_read_json(filesystem, info.path) for info in filesystem.get_file_info(selector)
               if info.path.endswith(".json")]
    return [report for report in reports if report]


def _run_line(report: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": report.get("run_id"), "state": report.get("state", "finished"),
            "started_at": report.get("started_at"), "finished_at": report.get("finished_at"),
            "processed": report.get("counts", {}).get("processed", 0),
            "wall_time_seconds": report.get("wall_time_seconds", 0.0),
            "rows_per_second": report.get("throughput", {}).get("rows_per_second", 0.0)}


def _lock(filesystem: pafs.FileSystem, directory: str) -> dict[str, Any] | None:
    try:
        with filesystem.open_input_stream(posixpath.join(directory, LOCK_NAME)) as stream:
            lease = parse_lease(stream.read())
    except FileNotFoundError:
        return None
    if lease is None:  # not a lease: the next run takes it over
        return {"run_id": "?", "host": "?", "pid": 0, "heartbeat_age_seconds": 0.0, "stale": True}
    return {"run_id": lease.run_id, "host": lease.host, "pid": lease.pid,
            "heartbeat_age_seconds": time.time() - lease.heartbeat_at,
            "stale": lease.is_stale(time.time())}


def _read_json(filesystem: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        return read_json(filesystem, path)
    except ValueError:  # status reads what it can; a malformed file is left to the runs
        return None
