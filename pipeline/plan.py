"""The Ray Data plan of a job: read, decode, generate (built lazily, run by the driver).

Ray Data's streaming executor runs the stages concurrently, so decoding overlaps
generation and memory stays bounded::

    index_input(id column of every input file)            # on the driver: rows left, duplicates
      -> read_datasource(RemainingRows)                    # only row groups with work, local or S3
      -> map_batches(DecodeStage, CPU tasks)              # media -> RGB frames / error rows
      -> repartition(target_num_rows_per_block=batch)     # spread rows over the actors
      -> map_batches(GenerateStage, actor pool)           # one model per actor

Resume is this project's own rather than Ray Data's checkpointing: the output
folder is the checkpoint (the ids in its finished shards), so it works on any
Ray version, survives a changed cluster, and a Ctrl-C or crash loses at most
the rows not yet in a finished shard. A resume reads the ids of all the input, and the
media of only the row groups that still hold work (``input_index``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.crash_ledger import MAX_ATTEMPTS
from pipeline.input_index import index_input
from pipeline.input_source import RemainingRows
from pipeline.inputs import input_files, media_base_dir, storage_options_for
from pipeline.media import MediaReader
from pipeline.ray_setup import worker_resources
from pipeline.stages import DecodeStage, GenerateStage
from pipeline.storage import max_attempts
from pipeline.storage_access import StorageAccess, storage_access
from pipeline.video_input import VideoInput, resolve_video_input

# Memory (bytes) a decode task reserves: a batch of decoded frames (8 video frames
# at 1080p, RGB, are 50 MB).
DECODE_TASK_MEMORY = 512 * 1024**2


@dataclass
class JobPlan:
    """The Ray Data pipeline of a job and what it will do (not yet executed)."""

    dataset: Any  # ray.data.Dataset of GENERATED_SCHEMA rows (None: nothing to do)
    input_rows: int  # rows of the input (after input.limit)
    skipped: int  # of those, rows whose id is already in the output
    duplicates: int = 0  # of the input rows, those whose id came earlier (input_index)

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

    input_fs, files = listed or input_files(spec)
    resources = worker_resources(spec, joined_cluster)
    columns = spec.input.columns
    selected = list(dict.fromkeys(n for n in (columns.id, columns.image, columns.video, columns.prompt) if n))
    index = index_input(input_fs, files, columns.id, done_ids, spec.input.limit)
    input_options = storage_options_for(spec.input.storage_options)
    access = storage_access(spec.input.path, input_options, joined_cluster)
    if not index.fragments:
        return JobPlan(dataset=None, input_rows=index.input_rows, skipped=index.done_rows,
                       duplicates=index.duplicate_rows)
    dataset = ray.data.read_datasource(
        RemainingRows(access, selected, columns.id, index.fragments, max_attempts(input_options)),
        # One read task per row group with work: Ray Data would otherwise split each
        # task's output into dozens of blocks of its own choosing, and a task hands its
        # blocks over two per scheduling step (~0.1 s), seconds before the first row
        # moves on.
        override_num_blocks=len(index.fragments),
        # A read task mostly waits (on storage, and on the executor taking its blocks):
        # holding a CPU through that would keep the decode tasks off a small node's
        # last free CPU. So it holds none, and at most decode_workers of them run at once.
        num_cpus=0,
        concurrency=spec.resources.decode_workers,
    )
    retries = MAX_ATTEMPTS - 1
    with warnings.catch_warnings():
        # Ray 2.60 warns that extra remote arguments are deprecated, yet names no parameter
        # for the bounded retries (max_retries, max_task_retries): a warning on every run
        # that a user can do nothing about.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated",
                                category=DeprecationWarning)
        dataset = _stages(spec, dataset, access, input_options, ledger_name, generate_stage,
                          resources, retries)
    return JobPlan(dataset=dataset, input_rows=index.input_rows, skipped=index.done_rows,
                   duplicates=index.duplicate_rows)


def _stages(spec: Any, dataset: Any, access: StorageAccess, input_options: dict[str, Any] | None,
            ledger_name: str | None, generate_stage: type, resources: Any, retries: int) -> Any:
    """The read rows, decoded by tasks, then generated by the model actors."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    batch_size = spec.resources.batch_size
    dataset = dataset.map_batches(
        _decode_stage(spec, access, input_options, ledger_name),
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
    # Ray Data gathers small blocks into large ones (up to
    # DataContext.target_max_block_size), and an actor task takes a whole block: without
    # this, one actor would get most of the rows and the other wait. Blocks of one batch
    # spread the rows over the actors. It comes after decoding, not before: a task that
    # cuts a block into many hands them over two per scheduling step (~0.1 s), and before
    # decoding it would hold the CPU the decode tasks need on a small node.
    dataset = dataset.repartition(target_num_rows_per_block=batch_size)
    dataset = dataset.map_batches(
        generate_stage,
        # The model actors never touch the output: its credentials stay on the driver.
        fn_constructor_kwargs={"spec": spec.without_output_credentials(),
                               "ledger_name": ledger_name},
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=spec.resources.workers),
        # A dead actor is restarted without limit (spot nodes come and go over days);
        # one batch is retried a bounded number of times.
        max_task_retries=retries,
        **generate_kwargs,
    )
    return dataset


def _decode_stage(spec: Any, access: StorageAccess, options: dict[str, Any] | None,
                  ledger_name: str | None) -> DecodeStage:
    columns = spec.input.columns
    return DecodeStage(
        id_column=columns.id,
        image_column=columns.image,
        video_column=columns.video,
        question_column=columns.prompt,
        video=_video_input(spec),
        base_dir=media_base_dir(spec.input.path),
        reader=MediaReader(
            storage_options=options,
            input_access=access,
            max_attempts=max_attempts(options),
        ),
        ledger_name=ledger_name,
    )


def _video_input(spec: Any) -> VideoInput | None:
    """How the decode stage samples and sizes video cells (None: the job has no video column)."""
    if spec.input.columns.video is None:
        return None
    from pipeline.model_runner import hub_kwargs, model_family, model_location

    settings = spec.model_settings()
    return resolve_video_input(spec.video, model_family(settings), model_location(settings),
                               hub_kwargs(settings))
