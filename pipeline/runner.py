"""Run a job: plan it, stream its rows into shards, keep the error budget, write the report.

The walk of one row: ``spec`` (the job) -> ``preflight`` (can it run?) -> ``inputs``
(which files, which rows) -> ``plan`` (the Ray Data pipeline) -> ``stages`` (decode,
then generate with ``model_runner``) -> here, the driver: ``output`` (atomic shards,
resume state), ``error_budget``, ``progress`` and ``report``; ``cli`` on top.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.crash_ledger import start_ledger
from pipeline.error_budget import ErrorBudget
from pipeline.error_rows import remove_error_rows
from pipeline.errors import JobError, SystemFault, TooManyErrors, first_line
from pipeline.fault_injection import AfterShard
from pipeline.fingerprint import check_fingerprint
from pipeline.inputs import input_files, storage_options_for
from pipeline.model_revision import with_pinned_revision
from pipeline.output import (
    ExistingOutput,
    ShardWriter,
    existing_output,
    filesystem_for,
    list_shards,
    new_run_id,
    remove_stale_temp_files,
    schema_metadata,
)
from pipeline.output_lock import OutputLock, lock_for_output
from pipeline.plan import JobPlan, plan_job
from pipeline.preflight import validate_job
from pipeline.progress import Progress
from pipeline.ray_setup import (
    ACTOR_START_TIMEOUT_ENV,
    actor_start_timeout_s,
    ensure_ray,
    ray_data_settings,
    wait_for_dataset_threads,
    warm_task_workers,
)
from pipeline.report import REPORT_NAME, ActorTiming, RunTally, build_report, write_report
from pipeline.stages import (
    STATUS_ERROR,
    TIMING_COLUMNS,
    WORKER_COLUMNS,
    GenerateStage,
    kept_ratio_sums,
)
from pipeline.stop_signals import Terminated, handled_stop_signals
from pipeline.storage import explain_storage_error, max_attempts


def run_job(spec: Any, job_file: str | None = None, generate_stage: type = GenerateStage,
            after_shard: AfterShard | None = None, retry_errors: bool = False) -> dict[str, Any]:
    """Run `spec` to completion; returns the report (also written as ``.zipvl/report.json``).

    Raises ``JobError`` when the job cannot run or the pipeline fails (a system fault:
    the rows it hit stay undone), ``TooManyErrors`` when more than
    ``output.max_error_fraction`` of the rows are error rows; rows that fail for their
    own reason (bad media, a prompt too long) are error rows, not a failure.
    `retry_errors` first takes the output's error rows out of their shards, so this run
    redoes them (``error_rows``). `generate_stage` (the generate actor class) and
    `after_shard` (called with the number of shards written after each batch) are seams
    for fault-injection tests.
    """
    problems = validate_job(spec)
    if problems:
        raise JobError("the job cannot run:\n" + "\n".join(f"  {line}" for line in problems))
    spec = with_pinned_revision(spec)  # before anything loads the model: one commit for all
    connection = ensure_ray(spec)
    try:
        if not connection.joined:  # a cluster's tasks may land on any node: no use there
            warm_task_workers(spec.resources.decode_workers)
        # After ensure_ray: ray.init replaces the SIGTERM handler with its own.
        with handled_stop_signals():
            return _run(spec, job_file, generate_stage, after_shard,
                        joined_cluster=connection.joined, retry_errors=retry_errors)
    finally:
        if connection.connected_here:
            import ray

            ray.shutdown()


@dataclass(frozen=True)
class _Start:
    """What a run holds from its first moment: its id and clocks, its output folder and
    the lock on it, its crash ledger, and whether it joined a running Ray cluster."""

    run_id: str
    started_wall: float
    started_at: str
    output_fs: Any
    output_dir: str
    lock: OutputLock
    ledger_name: str
    joined_cluster: bool
    job_file: str | None
    retry_errors: bool = False


@dataclass
class _Run:
    """One run's moving parts, from the output folder as found to the rows streamed in."""

    spec: Any
    start: _Start
    plan: JobPlan
    writer: ShardWriter
    budget: ErrorBudget
    tally: RunTally = field(default_factory=RunTally)
    report_written: float = 0.0


def _run(spec: Any, job_file: str | None, generate_stage: type,
         after_shard: AfterShard | None, joined_cluster: bool, retry_errors: bool) -> dict[str, Any]:
    import ray

    started_wall, started_at, run_id = time.monotonic(), _now(), new_run_id()
    output_options = storage_options_for(spec.output.storage_options)
    output_fs, output_dir = filesystem_for(spec.output.path, output_options)
    lock = lock_for_output(spec.output.path, output_dir, output_options, run_id,
                           spec.output.lock_ttl_seconds)
    ledger_name, ledger = start_ledger(run_id)
    try:
        return _run_locked(spec, generate_stage, after_shard,
                           _Start(run_id, started_wall, started_at, output_fs, output_dir, lock,
                                  ledger_name, joined_cluster, job_file, retry_errors))
    finally:
        ray.kill(ledger)
        lock.release()


def _run_locked(spec: Any, generate_stage: type, after_shard: AfterShard | None,
                start: _Start) -> dict[str, Any]:
    existing = _open_output(spec, start)
    listed = input_files(spec)
    with ray_data_settings():
        plan = plan_job(spec, existing.ids, generate_stage, listed, start.joined_cluster,
                        ledger_name=start.ledger_name)
        writer = _open_writer(spec, start)
        budget = ErrorBudget(spec.output.max_error_fraction, job_rows=plan.input_rows,
                             done_rows=plan.skipped, errors_by_kind=existing.errors_by_kind.copy())
        budget.check()  # earlier runs' error rows may already be over it
        run = _Run(spec, start, plan, writer, budget)
        _write_run_report(run, "running")
        print(f"[zipvl-batch] {spec.name}: {plan.to_process} row(s) to process "
              f"({plan.skipped} already in {spec.output.path}), model "
              f"{spec.model_settings().label}, method "
              f"{'dense' if spec.zipvl_config() is None else 'zipvl'}", file=sys.stderr)
        if plan.duplicates:
            print(f"[zipvl-batch] warning: {plan.duplicates} input row(s) repeat an earlier "
                  "row's id; each is written as a duplicate_id error row under the stand-in id "
                  "<id>#duplicate-<k>", file=sys.stderr)
        _stream(run, after_shard)
        return _finish(run)


def _open_writer(spec: Any, start: _Start) -> ShardWriter:
    options = storage_options_for(spec.output.storage_options)
    try:
        return ShardWriter(start.output_fs, start.output_dir, start.run_id,
                           spec.output.rows_per_file, _metadata(spec, start.run_id),
                           attempts=max_attempts(options))
    except Exception as error:
        raise JobError(f"output.path: {explain_storage_error('write', spec.output.path, options, error)}") from error


def _open_output(spec: Any, start: _Start) -> ExistingOutput:
    """Take the output folder's lock; what its finished shards hold."""
    output_options = storage_options_for(spec.output.storage_options)
    output_fs, output_dir = start.output_fs, start.output_dir
    try:
        start.lock.acquire()  # before anything is deleted: temp files may be a live run's
        remove_stale_temp_files(output_fs, output_dir)
        if start.retry_errors:
            check_fingerprint(output_fs, output_dir, spec)  # never redo rows of another job
            removed = remove_error_rows(output_fs, output_dir, max_attempts(output_options))
            print(f"[zipvl-batch] --retry-errors: {removed.rows} error row(s) taken out of "
                  f"{removed.shards_rewritten + removed.shards_deleted} shard(s); this run "
                  "redoes them", file=sys.stderr)
        existing = existing_output(output_fs, output_dir)
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"output.path: {explain_storage_error('list', spec.output.path, output_options, error)}") from error
    for path, target in existing.moved_aside.items():
        print(f"[zipvl-batch] warning: output shard {path} cannot be read as Parquet (a crash "
              f"before it reached the disk?); moved to {target}, and its rows will be redone",
              file=sys.stderr)
    if len(existing.ids) and not spec.output.resume:
        raise JobError(f"output.path: {spec.output.path} already holds {len(list_shards(output_fs, output_dir))} "
                       "shard(s) and output.resume is false; remove them or choose another output.path")
    check_fingerprint(output_fs, output_dir, spec)
    return existing


def _stream(run: _Run, after_shard: AfterShard | None) -> None:
    """Write the plan's rows into shards as they come, keeping the tally and the budget.

    However it ends, the rows already finished are flushed into a shard; a system
    fault becomes a ``JobError`` whose message names it.
    """
    writer, progress = run.writer, Progress(total=run.plan.to_process)
    try:
        if run.plan.to_process:
            batches = iter(run.plan.dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
            try:
                for batch in batches:
                    run.start.lock.check()  # never write once another run holds the folder
                    _tally_batch(run.tally, run.budget, progress, batch)
                    writer.write(batch)
                    run.budget.check()
                    if time.monotonic() - run.report_written > RUN_REPORT_INTERVAL_S:
                        _write_run_report(run, "running")
                    if after_shard is not None:
                        after_shard(len(writer.shards))
            finally:
                # Stop Ray Data's executor now rather than at garbage collection: after an
                # early stop it would still be running into ray.shutdown, which kills the
                # process (exit 1) before the CLI can report why the job stopped.
                batches.close()
                wait_for_dataset_threads()
        writer.flush()
    except KeyboardInterrupt as stop:
        # Keep what finished: the buffered rows become one more complete shard.
        writer.flush()
        _write_run_report(run, "interrupted")
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"\n[zipvl-batch] {how}; {writer.rows_written} row(s) saved, rerun to resume",
              file=sys.stderr)
        raise
    except TooManyErrors:
        writer.flush()  # the rows are finished, error rows included: keep them
        _write_run_report(run, "failed")
        raise
    except JobError:
        raise
    except Exception as error:
        try:
            writer.flush()
        except Exception:  # noqa: S110 (the pipeline's error is the one to report)
            pass
        _write_run_report(run, "failed")
        raise JobError(f"the pipeline failed after {writer.rows_written} row(s) were written "
                       f"(rerun to resume): {_explain(run.spec, error)}") from error
    progress.finish()
    if run.tally.rows != run.plan.to_process:
        raise JobError(f"the pipeline returned {run.tally.rows} row(s) but "
                       f"{run.plan.to_process} were expected")


def _report(run: _Run, state: str) -> dict[str, Any]:
    return build_report(
        job=run.spec.report_dict(),
        job_file=None if run.start.job_file is None else os.path.abspath(run.start.job_file),
        run_id=run.start.run_id,
        output_uri=run.spec.output.path,
        shards=[posixpath.basename(path) for path in run.writer.shards],
        tally=run.tally,
        input_rows=run.plan.input_rows,
        skipped_by_resume=run.plan.skipped,
        wall_time_seconds=time.monotonic() - run.start.started_wall,
        started_at=run.start.started_at,
        finished_at=None if state == "running" else _now(),
        state=state,
    )


def _write_run_report(run: _Run, state: str) -> None:
    """This run's report so far (``zipvl-batch status`` reads it); never fails the run."""
    try:
        write_report(run.start.output_fs, run.start.output_dir, _report(run, state),
                     finished=False, attempts=run.writer.attempts)
    except Exception as error:  # noqa: BLE001 (the rows matter more than the statistics)
        print(f"[zipvl-batch] warning: could not write the run report: {first_line(error)}",
              file=sys.stderr)
    run.report_written = time.monotonic()


def _finish(run: _Run) -> dict[str, Any]:
    """Write the report, say what was done, and apply the final error-budget check."""
    spec, tally = run.spec, run.tally
    report = _report(run, "finished")
    write_report(run.start.output_fs, run.start.output_dir, report, attempts=run.writer.attempts)
    kinds = ", ".join(f"{kind} {count}" for kind, count in tally.errors_by_kind.most_common())
    print(f"[zipvl-batch] done: {tally.ok} ok, {tally.error} error(s)"
          f"{f' ({kinds})' if kinds else ''}, {run.plan.skipped} skipped; output in "
          f"{spec.output.path} (report {REPORT_NAME})", file=sys.stderr)
    run.budget.check(final=True)
    return report


# How often a running job rewrites its run report (a killed job leaves the last one).
RUN_REPORT_INTERVAL_S = 30.0


def _tally_batch(tally: RunTally, budget: ErrorBudget, progress: Progress,
                 batch: pa.Table) -> None:
    """Count a batch of finished rows into the run's tally, the error budget and progress."""
    statuses = batch.column("status").to_pylist()
    errors = sum(status == STATUS_ERROR for status in statuses)
    tally.ok += len(statuses) - errors
    tally.error += errors
    prompt_tokens = pc.sum(batch.column("prompt_tokens")).as_py() or 0
    output_tokens = pc.sum(batch.column("output_tokens")).as_py() or 0
    tally.prompt_tokens += prompt_tokens
    tally.output_tokens += output_tokens
    layer_sums, kept_rows = kept_ratio_sums(batch)
    tally.add_kept_ratios(layer_sums, kept_rows)
    for node, actor, device in zip(*(batch.column(name).to_pylist() for name in WORKER_COLUMNS)):
        tally.rows_by_node[node] += 1
        tally.rows_by_actor[actor] += 1
        tally.devices[actor] = device
    actors = batch.column("_actor_id").to_pylist()
    for actor, *timings in zip(actors, *(batch.column(name).to_pylist() for name in TIMING_COLUMNS)):
        if timings[0] is not None:  # the first row of a generated batch
            tally.timing_by_actor.setdefault(actor, ActorTiming()).add_batch(*timings)
    failed = [] if not errors else [
        (row_id, message, kind) for row_id, status, message, kind in zip(
            batch.column("id").to_pylist(), statuses, batch.column("error").to_pylist(),
            batch.column("error_kind").to_pylist()) if status == STATUS_ERROR]
    for row_id, message, kind in failed:
        tally.add_error_sample(row_id, message, kind)
    budget.add(batch.num_rows, [kind for _, _, kind in failed],
               [message for _, message, _ in failed])
    kept_sum = float(pc.sum(batch.column("kept_ratio")).as_py() or 0.0)
    kept_count = batch.num_rows - batch.column("kept_ratio").null_count
    progress.update(batch.num_rows, errors, output_tokens, kept_sum, kept_count)


def _metadata(spec: Any, run_id: str) -> dict[bytes, bytes]:
    config = spec.zipvl_config()
    return schema_metadata(
        {
            "run_id": run_id,
            "model": spec.model_settings().model_dump(mode="json"),
            "method": "dense" if config is None else config.to_dict(),
            "task": spec.task.model_dump(mode="json"),
            "generation": spec.generation.model_dump(mode="json"),
        }
    )


def _explain(spec: Any, error: BaseException) -> str:
    """`error` in one line, with what to do where Ray's own words do not say it."""
    if "Timed out while starting actors" in str(error):
        timeout = actor_start_timeout_s()
        return (f"the cluster did not start the {spec.resources.workers} model actor(s) this "
                f"job asks for within {timeout} s ({ACTOR_START_TIMEOUT_ENV}): check that "
                "enough nodes with the resources each one needs (resources.gpus_per_worker, "
                "cpus_per_worker, accelerator_resource) are up (`ray status`), lower "
                f"resources.workers, or wait longer by setting {ACTOR_START_TIMEOUT_ENV}")
    return _concise(error)


_RAY_ADVICE = ("Failed to apply UDF transform", "To change retry attempts",
               "ray.exceptions.UserCodeException: UDF failed", "UserCodeException: UDF failed")


def _concise(error: BaseException) -> str:
    """The error that matters in a (possibly Ray-wrapped) error, in one line.

    A ``SystemFault`` raised in a worker reaches the driver only as text inside Ray's
    wrapped traceback (Ray Data re-raises it as a ``UserCodeException``), so it is
    found there; otherwise the last meaningful line of the innermost cause.
    """
    fault = re.search(rf"{SystemFault.__name__}: (.+)", str(error))
    if fault:
        return f"{SystemFault.__name__}: {fault.group(1).strip()}"[:1000]
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return _concise(cause)
    # Ray Data appends its own advice after the error ("Failed to apply UDF transform
    # after 1/1 attempts ...", "To change retry attempts ..."): not what went wrong.
    lines = [line.strip() for line in str(error).strip().splitlines()
             if line.strip() and not line.strip().startswith(_RAY_ADVICE)]
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    text = (raised or lines or [type(error).__name__])[-1]
    if ":" not in text:
        text = f"{type(error).__name__}: {text}"
    return text[:1000]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
