"""Run a job: build the Ray Data plan, stream its rows into shards, write the report.

Plan (Ray Data's streaming executor runs the stages concurrently, so decoding
overlaps generation and memory stays bounded)::

    read_parquet(input files, mapped columns)            # local or S3
      -> keep the first input.limit ids (chosen on the driver, in file order)
      -> drop ids already in the output (resume)          # pyarrow is_in per batch
      -> repartition(target_num_rows_per_block=batch)     # spread rows over the actors
      -> map_batches(DecodeStage, CPU tasks)              # media -> RGB frames / error rows
      -> map_batches(GenerateStage, actor pool)           # one model per actor
      -> driver: iter_batches -> ShardWriter             # atomic Parquet shards

Resume is this project's own rather than Ray Data's checkpointing: the output
folder is the checkpoint (the ids in its finished shards), so it works on any
Ray version, survives a changed cluster, and a Ctrl-C or crash loses at most
the rows not yet in a finished shard.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.error_budget import ErrorBudget
from pipeline.errors import JobError, SystemFault, TooManyErrors
from pipeline.media import MediaReader
from pipeline.output import (
    ShardWriter,
    existing_output,
    filesystem_for,
    list_shards,
    new_run_id,
    remove_stale_temp_files,
    schema_metadata,
)
from pipeline.progress import Progress
from pipeline.report import REPORT_NAME, RunTally, build_report, write_report
from pipeline.stages import (
    STATUS_ERROR,
    WORKER_COLUMNS,
    DecodeStage,
    GenerateStage,
    kept_ratio_sums,
)
from pipeline.storage import explain_storage_error, is_s3

# Test hooks: right after this many shards, the driver sends itself SIGKILL (a crash)
# or is interrupted as by Ctrl-C, so tests can stop a run at a known point.
CRASH_AFTER_SHARDS_ENV = "ZIPVL_BATCH_TEST_CRASH_AFTER_SHARDS"
INTERRUPT_AFTER_SHARDS_ENV = "ZIPVL_BATCH_TEST_INTERRUPT_AFTER_SHARDS"
# Memory (bytes) a decode task reserves: a batch of decoded frames (8 video frames
# at 1080p, RGB, are 50 MB).
DECODE_TASK_MEMORY = 512 * 1024**2
# Ray Data's own progress lines duplicate ours.
_QUIET_LOGGERS = ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor")
# Seconds to wait for all generate actors to start (model downloads count).
ACTOR_START_TIMEOUT_ENV = "ZIPVL_BATCH_ACTOR_START_TIMEOUT_S"
_GLOB_CHARACTERS = "*?["


# ------------------------------------------------------------------ validation


def validate_job(spec: Any) -> list[str]:
    """Problems that would stop `spec` from running, one line each (empty: it can run).

    Checks the input exists and its schema has the mapped columns, and that the
    model reference loads (configuration only: nothing is generated).
    """
    problems: list[str] = []
    try:
        _, files = input_files(spec)
        problems.extend(_column_problems(spec, files))
    except JobError as error:
        problems.append(str(error))
    problems.extend(_model_problems(spec))
    return problems


def _column_problems(spec: Any, files: list[str]) -> list[str]:
    filesystem, _ = filesystem_for(spec.input.path, storage_options_for(spec.input.storage_options))
    try:
        schema = pq.read_schema(files[0], filesystem=filesystem)
    except Exception as error:
        return [f"input.path: cannot read the Parquet schema of {files[0]}: {error}"]
    mapping = spec.input.columns.model_dump()
    return [
        f"input.columns.{field}: column {column!r} is not in the input "
        f"(columns: {', '.join(schema.names)})"
        for field, column in mapping.items()
        if column is not None and column not in schema.names
    ]


def _model_problems(spec: Any) -> list[str]:
    from transformers import AutoConfig

    from pipeline.model_runner import model_location

    settings = spec.model_settings()
    where = "model.preset" if settings.preset else "model.name_or_path"
    try:
        location = model_location(settings)
        kwargs: dict[str, Any] = {}
        if settings.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if settings.revision:
            kwargs["revision"] = settings.revision
        config = AutoConfig.from_pretrained(location, **kwargs)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [f"{where}: cannot load the model configuration of {settings.label}: {first_line}"]
    from pipeline.presets import MODEL_FAMILIES

    family = settings.family if settings.family != "auto" else config.model_type
    if family not in MODEL_FAMILIES:
        return [f"{where}: model type {config.model_type!r} is not supported "
                f"(supported: {', '.join(MODEL_FAMILIES)})"]
    return []


def input_files(spec: Any) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of the job's input (a file, a folder, or a glob)."""
    options = storage_options_for(spec.input.storage_options)
    uri = spec.input.path
    try:
        filesystem, path = filesystem_for(uri, options)
        if any(character in path for character in _GLOB_CHARACTERS):
            files = _glob(filesystem, path)
        else:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.File:
                files = [path]
            elif info.type == pafs.FileType.Directory:
                files = _parquet_files_under(filesystem, path)
            else:
                raise JobError(f"input.path: {uri} does not exist")
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"input.path: {explain_storage_error('list', uri, options, error)}") from error
    if not files:
        raise JobError(f"input.path: no Parquet files found at {uri}")
    return filesystem, files


def count_rows(filesystem: pafs.FileSystem, files: list[str]) -> int:
    """Rows in the input files, from their Parquet footers (no data is read)."""
    total = 0
    for path in files:
        try:
            with filesystem.open_input_file(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        except Exception as error:
            raise JobError(f"input.path: cannot read the Parquet footer of {path}: {error}") from error
    return total


def _parquet_files_under(filesystem: pafs.FileSystem, directory: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not _hidden(posixpath.relpath(info.path, directory))
    )


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[str]:
    first = min(pattern.index(c) for c in _GLOB_CHARACTERS if c in pattern)
    base = pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else "."
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and fnmatch.fnmatchcase(info.path, pattern)
        and not _hidden(posixpath.relpath(info.path, base))
    )


def _hidden(relative_path: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


def storage_options_for(job_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A job's ``storage_options`` as ``pipeline.storage`` takes them (None when empty)."""
    return dict(job_options) if job_options else None


# ------------------------------------------------------------------ Ray


def ensure_ray(spec: Any) -> bool:
    """Connect to (or start) Ray as the job says; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = spec.ray.address or os.environ.get("RAY_ADDRESS") or None
    common = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **common)
    else:
        # "local" always starts a private Ray: a bare ray.init() would join whichever
        # Ray was last started on this machine (someone else's job, say).
        ray.init(address="local", num_cpus=spec.ray.num_cpus,
                 resources=dict(spec.ray.resources) or None, **common)
    return True


@dataclass(frozen=True)
class WorkerResources:
    """What each generate actor asks Ray for."""

    num_gpus: float
    num_cpus: float
    resources: dict[str, float]


def worker_resources(spec: Any) -> WorkerResources:
    """Resolve ``gpus_per_worker: auto`` and check that the cluster can place a worker."""
    import ray

    cluster = ray.cluster_resources()
    requested = spec.resources.gpus_per_worker
    gpus = (1.0 if cluster.get("GPU", 0) >= 1 else 0.0) if requested == "auto" else float(requested)
    if gpus > 0 and cluster.get("GPU", 0) < gpus:
        raise JobError(f"resources.gpus_per_worker: {gpus:g} GPU(s) per worker, but the Ray "
                       f"cluster has {cluster.get('GPU', 0):g}")
    resources: dict[str, float] = {}
    accelerator = spec.resources.accelerator_resource
    if accelerator:
        if cluster.get(accelerator, 0) < 1:
            raise JobError(f"resources.accelerator_resource: the Ray cluster has no {accelerator!r} "
                           f"resource (it has: {', '.join(sorted(cluster))})")
        resources[accelerator] = 1.0
    cpus_per_worker = float(spec.resources.cpus_per_worker)
    spare_cpus = cluster.get("CPU", 0) - spec.resources.workers * cpus_per_worker
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


class _IdFilter:
    """Batch filter on the id column against a set of ids held in the object store.

    ``keep=False`` drops the rows whose id is in the set (resume: already done);
    ``keep=True`` keeps only those rows (``input.limit``: the chosen first rows).
    """

    def __init__(self, ids_ref: Any, id_column: str, keep: bool) -> None:
        self.ids_ref = ids_ref  # shipped by reference; each worker fetches the set once
        self.id_column = id_column
        self.keep = keep
        self._ids: pa.Array | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        if self._ids is None:
            self._ids = ray.get(self.ids_ref)
        member = pc.is_in(batch.column(self.id_column).cast(pa.string()), value_set=self._ids)
        return batch.filter(member if self.keep else pc.invert(member))


def first_ids(filesystem: pafs.FileSystem, files: list[str], id_column: str, limit: int) -> tuple[list[str], pa.Array]:
    """The first `limit` ids in file order, and the files that hold them.

    ``input.limit`` is resolved here on the driver rather than with Ray's
    ``limit``, whose choice of rows depends on which read finishes first: a
    resumed run must see the same rows as the run it resumes.
    """
    chunks, needed_files, count = [], [], 0
    for path in files:
        if count >= limit:
            break
        ids = pq.read_table(path, columns=[id_column], filesystem=filesystem).column(id_column)
        chunks.extend(ids.cast(pa.string()).chunks)
        needed_files.append(path)
        count += len(ids)
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    return needed_files, ids.slice(0, limit)


def run_job(spec: Any, job_file: str | None = None,
            generate_stage: type = GenerateStage) -> dict[str, Any]:
    """Run `spec` to completion; returns the report (also written as ``.zipvl/report.json``).

    Raises ``JobError`` when the job cannot run or the pipeline fails (a system fault:
    the rows it hit stay undone), ``TooManyErrors`` when more than
    ``output.max_error_fraction`` of the rows are error rows; rows that fail for their
    own reason (bad media, a prompt too long) are error rows, not a failure.
    `generate_stage` is the actor class of the generate stage: tests pass a
    ``GenerateStage`` subclass to inject faults into a real run.
    """
    problems = validate_job(spec)
    if problems:
        raise JobError("the job cannot run:\n" + "\n".join(f"  {line}" for line in problems))
    started_ray = ensure_ray(spec)
    try:
        return _run(spec, job_file, generate_stage)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


@dataclass
class JobPlan:
    """The Ray Data pipeline of a job and what it will do (not yet executed)."""

    dataset: Any  # ray.data.Dataset of GENERATED_SCHEMA rows
    input_rows: int  # rows of the input (after input.limit)
    skipped: int  # of those, rows whose id is already in the output

    @property
    def to_process(self) -> int:
        return self.input_rows - self.skipped


FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


def plan_job(spec: Any, done_ids: pa.Array, generate_stage: type = GenerateStage) -> JobPlan:
    """Build the (lazy) Ray Data plan of `spec`, leaving out the ids in `done_ids`."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    columns = spec.input.columns
    input_fs, files = input_files(spec)
    resources = worker_resources(spec)
    # Ray Data 2.60 starts a pool of footer-reading actors per read (32 by default): for a
    # few files that is tens of seconds of process start-up before the first row, which
    # the benchmark measured; one actor per 64 files is plenty (the user's value wins).
    os.environ.setdefault(FOOTER_ACTORS_ENV, str(min(32, 1 + len(files) // 64)))
    selected = list(dict.fromkeys(n for n in (columns.id, columns.image, columns.video, columns.prompt) if n))
    if spec.input.limit is not None:
        files, chosen = first_ids(input_fs, files, columns.id, spec.input.limit)
        input_rows = len(chosen)
        if len(done_ids):
            chosen = chosen.filter(pc.invert(pc.is_in(chosen, value_set=done_ids)))
        skipped = input_rows - len(chosen)
        row_filter = _IdFilter(ray.put(chosen), columns.id, keep=True)
    else:
        input_rows = count_rows(input_fs, files)
        skipped = 0
        row_filter = None
        if len(done_ids):
            row_filter = _IdFilter(ray.put(done_ids), columns.id, keep=False)
            id_only = ray.data.read_parquet(files, filesystem=input_fs, columns=[columns.id])
            skipped = input_rows - id_only.map_batches(row_filter, batch_format="pyarrow").count()
    dataset = ray.data.read_parquet(files, filesystem=input_fs, columns=selected)
    if row_filter is not None:
        dataset = dataset.map_batches(row_filter, batch_format="pyarrow")

    batch_size = spec.resources.batch_size
    # Small inputs are one block; blocks of one batch spread the rows over the actors.
    dataset = dataset.repartition(target_num_rows_per_block=batch_size)
    decode = DecodeStage(
        id_column=columns.id,
        image_column=columns.image,
        video_column=columns.video,
        question_column=columns.prompt,
        video_frames=spec.task.video_frames,
        base_dir=_input_base_dir(spec.input.path),
        reader=MediaReader(
            storage_options=storage_options_for(spec.input.storage_options),
            s3_filesystem=input_fs if is_s3(spec.input.path) else None,
        ),
    )
    dataset = dataset.map_batches(
        decode,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=TaskPoolStrategy(size=spec.resources.decode_workers),
        num_cpus=1,
        # Reserving memory for the decoded frames also keeps decoding a stage of its own:
        # Ray Data fuses a task stage into the next actor stage when both request the
        # same resources (a CPU-only job), and decoding would then stop overlapping
        # generation.
        memory=DECODE_TASK_MEMORY,
    )
    generate_kwargs: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        generate_kwargs["num_gpus"] = resources.num_gpus
    if resources.resources:
        generate_kwargs["resources"] = resources.resources
    dataset = dataset.map_batches(
        generate_stage,
        fn_constructor_kwargs={"spec": spec},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=spec.resources.workers),
        **generate_kwargs,
    )
    return JobPlan(dataset=dataset, input_rows=input_rows, skipped=skipped)


def configure_ray_data() -> None:
    """Ray Data settings for a job run from this driver."""
    from ray.data import DataContext

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if "executor" in name else logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Start every generate actor (model loaded) before rows flow, so work spreads over
    # all of them and a cluster that cannot place them fails with a message, not a hang.
    context.wait_for_min_actors_s = int(os.environ.get(ACTOR_START_TIMEOUT_ENV, "3600"))


def _run(spec: Any, job_file: str | None, generate_stage: type) -> dict[str, Any]:
    started_wall, started_at = time.monotonic(), _now()
    run_id = new_run_id()
    output_options = storage_options_for(spec.output.storage_options)
    output_fs, output_dir = filesystem_for(spec.output.path, output_options)
    try:
        remove_stale_temp_files(output_fs, output_dir)
        existing = existing_output(output_fs, output_dir)
    except JobError:
        raise
    except Exception as error:
        raise JobError(f"output.path: {explain_storage_error('list', spec.output.path, output_options, error)}") from error
    done_ids = existing.ids
    if len(done_ids) and not spec.output.resume:
        raise JobError(f"output.path: {spec.output.path} already holds {len(list_shards(output_fs, output_dir))} "
                       "shard(s) and output.resume is false; remove them or choose another output.path")
    configure_ray_data()
    plan = plan_job(spec, done_ids, generate_stage)
    dataset, input_rows, skipped, to_process = plan.dataset, plan.input_rows, plan.skipped, plan.to_process

    try:
        writer = ShardWriter(output_fs, output_dir, run_id, spec.output.rows_per_file, _metadata(spec, run_id))
    except Exception as error:
        raise JobError(f"output.path: {explain_storage_error('write', spec.output.path, output_options, error)}") from error
    tally = RunTally()
    budget = ErrorBudget(spec.output.max_error_fraction, job_rows=input_rows, done_rows=skipped,
                         errors_by_kind=existing.errors_by_kind.copy())
    budget.check()  # earlier runs' error rows may already be over it
    progress = Progress(total=to_process)
    stop_signals = _test_stop_signals()
    print(f"[zipvl-batch] {spec.name}: {to_process} row(s) to process "
          f"({skipped} already in {spec.output.path}), model {spec.model_settings().label}, "
          f"method {'dense' if spec.zipvl_config() is None else 'zipvl'}", file=sys.stderr)
    try:
        if to_process:
            batches = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
            try:
                for batch in batches:
                    _tally_batch(tally, progress, batch)
                    writer.write(batch)
                    _spend(budget, batch)
                    budget.check()
                    for after, signal_number in stop_signals:
                        if len(writer.shards) < after:
                            continue
                        if signal_number == signal.SIGINT:
                            # What Python's SIGINT handler does, called directly: a SIGINT
                            # sent to the driver was once seen not to stop the run in CI
                            # (Ray can hold SIGINT back while it deserialises), and the
                            # test needs the interruption at this exact point.
                            signal.default_int_handler(signal.SIGINT, None)
                        os.kill(os.getpid(), signal_number)
            finally:
                # Stop Ray Data's executor now rather than at garbage collection: after an
                # early stop it would still be running into ray.shutdown, which kills the
                # process (exit 1) before the CLI can report why the job stopped.
                getattr(batches, "close", lambda: None)()
        writer.flush()
    except KeyboardInterrupt:
        # Keep what finished: the buffered rows become one more complete shard.
        writer.flush()
        print(f"\n[zipvl-batch] interrupted; {writer.rows_written} row(s) saved, rerun to resume",
              file=sys.stderr)
        raise
    except TooManyErrors:
        writer.flush()  # the rows are finished, error rows included: keep them
        raise
    except JobError:
        raise
    except Exception as error:
        try:
            writer.flush()
        except Exception:  # noqa: S110 (the pipeline's error is the one to report)
            pass
        raise JobError(f"the pipeline failed after {writer.rows_written} row(s) were written "
                       f"(rerun to resume): {_concise(error)}") from error
    progress.finish()
    if tally.rows != to_process:
        raise JobError(f"the pipeline returned {tally.rows} row(s) but {to_process} were expected")

    report = build_report(
        job=spec.report_dict(),
        job_file=None if job_file is None else os.path.abspath(job_file),
        run_id=run_id,
        output_uri=spec.output.path,
        shards=[posixpath.basename(path) for path in writer.shards],
        tally=tally,
        input_rows=input_rows,
        skipped_by_resume=skipped,
        wall_time_seconds=time.monotonic() - started_wall,
        started_at=started_at,
        finished_at=_now(),
    )
    write_report(output_fs, output_dir, report)
    kinds = ", ".join(f"{kind} {count}" for kind, count in tally.errors_by_kind.most_common())
    print(f"[zipvl-batch] done: {tally.ok} ok, {tally.error} error(s)"
          f"{f' ({kinds})' if kinds else ''}, {skipped} skipped; output in {spec.output.path} "
          f"(report {REPORT_NAME})", file=sys.stderr)
    budget.check(final=True)
    return report


def _test_stop_signals() -> list[tuple[int, int]]:
    hooks = ((CRASH_AFTER_SHARDS_ENV, signal.SIGKILL), (INTERRUPT_AFTER_SHARDS_ENV, signal.SIGINT))
    return [(int(os.environ[name]), number) for name, number in hooks if os.environ.get(name)]


def _spend(budget: ErrorBudget, batch: pa.Table) -> None:
    failed = batch.filter(pc.equal(batch.column("status"), STATUS_ERROR))
    budget.add(batch.num_rows, failed.column("error_kind").to_pylist(),
               failed.column("error").to_pylist())


def _tally_batch(tally: RunTally, progress: Progress, batch: pa.Table) -> None:
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
    if errors:
        for row_id, status, message, kind in zip(batch.column("id").to_pylist(), statuses,
                                                 batch.column("error").to_pylist(),
                                                 batch.column("error_kind").to_pylist()):
            if status == STATUS_ERROR:
                tally.add_error_sample(row_id, message, kind)
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


def _input_base_dir(uri: str) -> str:
    """The folder that relative media paths in the input are resolved against."""
    if any(character in uri for character in _GLOB_CHARACTERS):
        uri = uri[: min(uri.index(c) for c in _GLOB_CHARACTERS if c in uri)]
        return uri.rsplit("/", 1)[0] if "/" in uri else "."
    if uri.endswith(".parquet"):
        return uri.rsplit("/", 1)[0] if "/" in uri else "."
    return uri


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
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    if ":" not in text:
        text = f"{type(error).__name__}: {text}"
    return text[:1000]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
