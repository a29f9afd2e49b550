"""The Ray Data plan of a job: read, filter, decode, generate (built lazily, run by the driver).

Ray Data's streaming executor runs the stages concurrently, so decoding overlaps
generation and memory stays bounded::

    read_parquet(input files, mapped columns)            # local or S3
      -> keep the first input.limit ids (chosen on the driver, in file order)
      -> drop ids already in the output (resume)          # pyarrow is_in per batch
      -> repartition(target_num_rows_per_block=batch)     # spread rows over the actors
      -> map_batches(DecodeStage, CPU tasks)              # media -> RGB frames / error rows
      -> map_batches(GenerateStage, actor pool)           # one model per actor

Resume is this project's own rather than Ray Data's checkpointing: the output
folder is the checkpoint (the ids in its finished shards), so it works on any
Ray version, survives a changed cluster, and a Ctrl-C or crash loses at most
the rows not yet in a finished shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.crash_ledger import MAX_ATTEMPTS
from pipeline.inputs import count_rows, first_ids, input_files, media_base_dir, storage_options_for
from pipeline.media import MediaReader
from pipeline.ray_setup import worker_resources
from pipeline.row_ids import canonical_ids
from pipeline.stages import DecodeStage, GenerateStage
from pipeline.storage import is_s3, max_attempts

# Memory (bytes) a decode task reserves: a batch of decoded frames (8 video frames
# at 1080p, RGB, are 50 MB).
DECODE_TASK_MEMORY = 512 * 1024**2


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
        member = pc.is_in(canonical_ids(batch.column(self.id_column)), value_set=self._ids)
        return batch.filter(member if self.keep else pc.invert(member))


@dataclass
class JobPlan:
    """The Ray Data pipeline of a job and what it will do (not yet executed)."""

    dataset: Any  # ray.data.Dataset of GENERATED_SCHEMA rows
    input_rows: int  # rows of the input (after input.limit)
    skipped: int  # of those, rows whose id is already in the output

    @property
    def to_process(self) -> int:
        return self.input_rows - self.skipped


def plan_job(spec: Any, done_ids: pa.Array, generate_stage: type = GenerateStage,
             listed: tuple[Any, list[str]] | None = None, joined_cluster: bool = False,
             ledger_name: str | None = None) -> JobPlan:
    """Build the (lazy) Ray Data plan of `spec`, leaving out the ids in `done_ids`.

    `generate_stage` is the actor class of the generate stage: tests pass a
    ``GenerateStage`` subclass to inject faults into a real run. `listed` is
    ``inputs.input_files(spec)`` where the caller already has it. `joined_cluster`:
    Ray was running before the job (see ``ray_setup.worker_resources``). `ledger_name`:
    the run's crash ledger, which turns a row that kills its worker into an error row
    (``crash_ledger``); Ray's retries of a batch are bounded to match.
    """
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    input_fs, files = listed or input_files(spec)
    resources = worker_resources(spec, joined_cluster)
    columns = spec.input.columns
    selected = list(dict.fromkeys(n for n in (columns.id, columns.image, columns.video, columns.prompt) if n))
    files, row_filter, input_rows, skipped = _rows_to_do(spec, input_fs, files, done_ids)
    dataset = ray.data.read_parquet(files, filesystem=input_fs, columns=selected)
    if row_filter is not None:
        dataset = dataset.map_batches(row_filter, batch_format="pyarrow")

    batch_size = spec.resources.batch_size
    # Small inputs are one block; blocks of one batch spread the rows over the actors.
    dataset = dataset.repartition(target_num_rows_per_block=batch_size)
    retries = MAX_ATTEMPTS - 1
    dataset = dataset.map_batches(
        _decode_stage(spec, input_fs, ledger_name),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=TaskPoolStrategy(size=spec.resources.decode_workers),
        num_cpus=1,
        # Reserving memory for the decoded frames also keeps decoding a stage of its own:
        # Ray Data fuses a task stage into the next actor stage when both request the
        # same resources (a CPU-only job), and decoding would then stop overlapping
        # generation.
        memory=DECODE_TASK_MEMORY,
        max_retries=retries,
    )
    generate_kwargs: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        generate_kwargs["num_gpus"] = resources.num_gpus
    if resources.resources:
        generate_kwargs["resources"] = resources.resources
    dataset = dataset.map_batches(
        generate_stage,
        fn_constructor_kwargs={"spec": spec, "ledger_name": ledger_name},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=spec.resources.workers),
        # A dead actor is restarted without limit (spot nodes come and go over days);
        # one batch is retried a bounded number of times.
        max_task_retries=retries,
        **generate_kwargs,
    )
    return JobPlan(dataset=dataset, input_rows=input_rows, skipped=skipped)


def _rows_to_do(spec: Any, input_fs: Any, files: list[str],
                done_ids: pa.Array) -> tuple[list[str], _IdFilter | None, int, int]:
    """The files to read, the id filter to apply, the job's rows and how many are done."""
    import ray

    id_column = spec.input.columns.id
    if spec.input.limit is not None:
        files, chosen = first_ids(input_fs, files, id_column, spec.input.limit)
        input_rows = len(chosen)
        if len(done_ids):
            chosen = chosen.filter(pc.invert(pc.is_in(chosen, value_set=done_ids)))
        return files, _IdFilter(ray.put(chosen), id_column, keep=True), input_rows, input_rows - len(chosen)
    input_rows = count_rows(input_fs, files)
    if not len(done_ids):
        return files, None, input_rows, 0
    row_filter = _IdFilter(ray.put(done_ids), id_column, keep=False)
    id_only = ray.data.read_parquet(files, filesystem=input_fs, columns=[id_column])
    remaining = id_only.map_batches(row_filter, batch_format="pyarrow").count()
    return files, row_filter, input_rows, input_rows - remaining


def _decode_stage(spec: Any, input_fs: Any, ledger_name: str | None) -> DecodeStage:
    columns = spec.input.columns
    options = storage_options_for(spec.input.storage_options)
    return DecodeStage(
        id_column=columns.id,
        image_column=columns.image,
        video_column=columns.video,
        question_column=columns.prompt,
        video_frames=spec.task.video_frames,
        base_dir=media_base_dir(spec.input.path),
        reader=MediaReader(
            storage_options=options,
            s3_filesystem=input_fs if is_s3(spec.input.path) else None,
            max_attempts=max_attempts(options),
        ),
        ledger_name=ledger_name,
    )
