"""The two Ray Data stages: ``DecodeStage`` (CPU tasks) and ``GenerateStage`` (actor pool).

``DecodeStage`` reads the media cell of each row and hands the generate stage
decoded, RGB-normalised frames as raw pixel bytes (width and height beside
them), so the accelerator workers never spend time on JPEG/PNG or video
decoding and Ray Data's streaming executor overlaps decoding with generation.
A cell that cannot be decoded becomes an error row here, with the reason and its
kind (``pipeline.errors.ERROR_KINDS``).

``GenerateStage`` loads the model once per actor, enables ZipVL as the job
asks, and generates each batch together. Rows that arrive in error pass
through untouched; a generation that fails for a reason that is not the row's
raises ``SystemFault`` and fails the pipeline (see ``model_runner``). Besides the output columns it emits private columns
(names starting with ``_``: the worker's node, actor and device, and the
per-layer kept ratios) that the driver aggregates into ``.zipvl/report.json`` and
drops before writing. Each batch also carries its own timings (``TIMING_COLUMNS``)
so the report can say how busy each model was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.crash_ledger import WORKER_DIED_KIND, guarded
from pipeline.errors import SystemFault, first_line
from pipeline.input_index import DUPLICATE_COLUMN
from pipeline.media import MediaError, MediaReader, decode_image
from pipeline.output import OUTPUT_COLUMNS, OUTPUT_SCHEMA
from pipeline.redaction import redact_urls_in
from pipeline.row_ids import canonical_ids
from pipeline.video import FrameSampling, decode_video
from pipeline.video_input import VideoInput

STATUS_OK = "ok"
STATUS_ERROR = "error"

DECODED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("frames", pa.list_(pa.large_binary())),
        pa.field("frame_width", pa.int32()),
        pa.field("frame_height", pa.int32()),
        # Video rows: read natively (else the frames are images), when each frame is shown
        # (seconds from the clip's start), the clip's length and the frames per second sampled.
        pa.field("native_video", pa.bool_()),
        pa.field("frame_timestamps", pa.list_(pa.float64())),
        pa.field("video_duration", pa.float64()),
        pa.field("sampled_fps", pa.float64()),
        pa.field("question", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
    ]
)
WORKER_COLUMNS = ("_node_id", "_actor_id", "_device")
KEPT_PER_LAYER_COLUMN = "_kept_ratio_per_layer"
# A batch's timings sit on its first row only (null on the others), so the driver counts
# each batch once however Ray Data re-slices the blocks. Seconds, and epoch seconds for
# when the batch started and finished in the actor; "generating" is the processor and
# generate, the rest of a batch is unpacking frames and building the table.
TIMING_COLUMNS = ("_model_load_seconds", "_batch_seconds", "_generating_seconds",
                  "_batch_started", "_batch_finished")
GENERATED_SCHEMA = pa.schema(
    list(OUTPUT_SCHEMA)
    + [pa.field(name, pa.string()) for name in WORKER_COLUMNS]
    + [pa.field(KEPT_PER_LAYER_COLUMN, pa.list_(pa.float64()))]
    + [pa.field(name, pa.float64()) for name in TIMING_COLUMNS]
)


def pack_frames(frames: list[Image.Image]) -> tuple[list[bytes], int, int]:
    """RGB frames of one size as raw bytes, with their width and height."""
    width, height = frames[0].size
    for index, frame in enumerate(frames):
        if frame.size != (width, height):
            raise MediaError(f"the video's frames change size mid-clip: frame 0 is "
                             f"{width}x{height}, frame {index} is {frame.size[0]}x{frame.size[1]}")
    return [frame.convert("RGB").tobytes() for frame in frames], width, height


def unpack_frames(frames: list[bytes], width: int, height: int) -> list[Image.Image]:
    """Inverse of ``pack_frames``."""
    return [Image.frombytes("RGB", (width, height), bytes(frame)) for frame in frames]


@dataclass(frozen=True)
class DecodeStage:
    """Per batch: input columns (as the job maps them) -> ``DECODED_SCHEMA`` rows.

    Used as a plain function by Ray Data (an instance, not a class), so it
    runs as stateless CPU tasks that scale with ``resources.decode_workers``.
    """

    id_column: str
    image_column: str | None = None
    video_column: str | None = None
    question_column: str | None = None
    video: VideoInput | None = None  # how video cells are sampled and read (video_input)
    base_dir: str | None = None
    reader: MediaReader | None = None
    ledger_name: str | None = None  # this run's crash ledger (pipeline.crash_ledger)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = canonical_ids(batch.column(self.id_column)).to_pylist()
        images = self._column(batch, self.image_column)
        videos = self._column(batch, self.video_column)
        questions = self._column(batch, self.question_column)
        duplicate_of = self._column(batch, DUPLICATE_COLUMN if DUPLICATE_COLUMN
                                    in batch.column_names else None)

        def decode(indices: list[int]) -> list[dict[str, Any]]:
            return [{"error": duplicate_of[i], "error_kind": "duplicate_id"} if duplicate_of[i]
                    else self._decode_row(ids[i], images[i], videos[i]) for i in indices]

        def died_on(index: int, deaths: int) -> dict[str, Any]:
            return {"error": f"the decode worker process died {deaths} times while decoding "
                             "this row (a decoder crash on this media?)",
                    "error_kind": WORKER_DIED_KIND}

        decoded = guarded(self.ledger_name, "decode", ids, decode, died_on)
        columns: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
        for index, (row_id, question, row) in enumerate(zip(ids, questions, decoded)):
            row = {**row, "id": row_id if row_id is not None else f"<null id at batch row {index}>",
                   "question": None if question is None else str(question),
                   "status": STATUS_ERROR if row.get("error") else STATUS_OK}
            row.setdefault("frames", [])
            for name, values in columns.items():
                values.append(row.get(name))
        return pa.Table.from_pydict(columns, schema=DECODED_SCHEMA)

    def _decode_row(self, row_id: str | None, image_cell: Any, video_cell: Any) -> dict[str, Any]:
        """The ``DECODED_SCHEMA`` fields of one row (``error`` and ``error_kind`` when it failed)."""
        error = kind = None
        try:
            if row_id is None:
                raise MediaError("the id cell is empty (null)", kind="bad_id")
            row = self._decode(image_cell, video_cell)
        except MediaError as problem:
            error, kind = str(problem), problem.kind
        except SystemFault:
            raise  # storage unreachable after its retries: the job stops, the row is redone
        except Exception as problem:  # noqa: BLE001 (any other failure is this cell's)
            # A cell no decoder expected (a struct whose bytes are a string, ...) is the
            # row's fault; failing the block would fail every rerun on the same row.
            kind = "media"
            error = f"cannot decode the media cell: {type(problem).__name__}: {first_line(problem)}"
        if error is not None:  # it goes into the output: no URL's credentials in it
            return {"error": redact_urls_in(error), "error_kind": kind}
        return row

    def _decode(self, image_cell: Any, video_cell: Any) -> dict[str, Any]:
        if video_cell is not None:
            video = self.video or VideoInput(native=False, sampling=FrameSampling())
            clip = decode_video(video_cell, video.sampling, frame_size=video.frame_size,
                                base_dir=self.base_dir, reader=self.reader)
            frames, width, height = pack_frames(clip.frames)
            return {"frames": frames, "frame_width": width, "frame_height": height,
                    "native_video": video.native, "frame_timestamps": clip.timestamps,
                    "video_duration": clip.duration, "sampled_fps": clip.sampled_fps}
        if self.image_column is None:
            raise MediaError(f"the video cell (column {self.video_column!r}) is empty (null)")
        frames, width, height = pack_frames(
            [decode_image(image_cell, base_dir=self.base_dir, reader=self.reader)])
        return {"frames": frames, "frame_width": width, "frame_height": height}

    @staticmethod
    def _column(batch: pa.Table, name: str | None) -> list[Any]:
        if name is None:
            return [None] * batch.num_rows
        return batch.column(name).to_pylist()


class GenerateStage:
    """Actor for ``map_batches``: ``DECODED_SCHEMA`` rows -> ``GENERATED_SCHEMA`` rows.

    `spec` is the ``pipeline.spec.JobSpec`` being run.
    """

    def __init__(self, spec: Any, ledger_name: str | None = None) -> None:
        import ray
        import torch
        from transformers.utils import logging as transformers_logging

        from pipeline.model_runner import GenerationSettings, load_model

        transformers_logging.disable_progress_bar()
        load_started = time.monotonic()
        self.spec = spec
        self.ledger_name = ledger_name  # this run's crash ledger (pipeline.crash_ledger)
        use_cuda = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        device = "cuda" if use_cuda else "cpu"
        if not use_cuda and spec.resources.cpus_per_worker >= 1:
            torch.set_num_threads(int(spec.resources.cpus_per_worker))
        self.loaded = load_model(spec.model_settings(), spec.zipvl_config(), device,
                                 max_video_tokens=spec.video.max_video_tokens)
        self.model_load_seconds = time.monotonic() - load_started
        self.generation = GenerationSettings.from_section(spec.generation)
        self.model_label = spec.model_settings().label
        self.method_label = spec.method_label()
        context = ray.get_runtime_context()
        self.worker = {
            "_node_id": context.get_node_id(),
            "_actor_id": context.get_actor_id() or f"pid-{os.getpid()}",
            "_device": device if device == "cpu" else f"cuda:{torch.cuda.get_device_name()}",
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.model_runner import RowResult

        started, started_clock = time.time(), time.monotonic()
        rows = batch.to_pylist()
        self._generating_seconds = 0.0

        def died_on(index: int, deaths: int) -> RowResult:
            return RowResult(error=f"the model worker process died {deaths} times while "
                                   "generating this row", error_kind=WORKER_DIED_KIND)

        results = guarded(self.ledger_name, "generate", [row["id"] for row in rows],
                          lambda indices: self._results([rows[i] for i in indices]), died_on)
        table = self._table(rows, results)
        timings = (self.model_load_seconds, time.monotonic() - started_clock,
                   self._generating_seconds, started, time.time())
        for name, value in zip(TIMING_COLUMNS, timings if table.num_rows else ()):
            column = pa.array([value] + [None] * (table.num_rows - 1), type=pa.float64())
            table = table.set_column(table.schema.get_field_index(name), name, column)
        return table

    def _results(self, rows: list[dict[str, Any]]) -> list[Any]:
        """One ``RowResult`` per decoded row: its error passed on, or generated together."""
        from pipeline.model_runner import RowResult, generate_rows
        from pipeline.prompts import PromptError, RowMedia, prompt_text

        results: list[RowResult | None] = [None] * len(rows)
        pending: list[tuple[int, str, RowMedia]] = []
        for index, row in enumerate(rows):
            if row["status"] != STATUS_OK:
                results[index] = RowResult(error=row["error"] or "decode failed",
                                           error_kind=row["error_kind"] or "media")
                continue
            try:
                text = prompt_text(self.spec.task, row["question"])
            except PromptError as error:
                results[index] = RowResult(error=str(error), error_kind="prompt")
                continue
            frames = tuple(unpack_frames(row["frames"], row["frame_width"], row["frame_height"]))
            media = RowMedia(video=frames, sampled_fps=row["sampled_fps"]) if row["native_video"] \
                else RowMedia(images=frames)
            pending.append((index, text, media))
        generating_started = time.monotonic()
        generated = generate_rows(
            self.loaded, [text for _, text, _ in pending], [media for _, _, media in pending],
            self.generation, row_ids=[rows[index]["id"] for index, _, _ in pending],
        )
        self._generating_seconds += time.monotonic() - generating_started
        for (index, _, _), result in zip(pending, generated):
            results[index] = result
        return results

    def _table(self, rows: list[dict[str, Any]], results: list[Any]) -> pa.Table:
        count = len(rows)
        columns: dict[str, list] = {
            "id": [row["id"] for row in rows],
            "output": [r.output if r.error is None else None for r in results],
            "status": [STATUS_OK if r.error is None else STATUS_ERROR for r in results],
            "error": [r.error for r in results],
            "error_kind": [r.error_kind for r in results],
            "prompt_tokens": [r.prompt_tokens for r in results],
            "output_tokens": [r.output_tokens for r in results],
            "kept_ratio": [r.kept_ratio for r in results],
            "model": [self.model_label] * count,
            "method": [self.method_label] * count,
            # Set by the decode stage for video rows it decoded, null for the rest.
            "frame_timestamps": [row["frame_timestamps"] for row in rows],
            "video_duration": [row["video_duration"] for row in rows],
        }
        for name, value in self.worker.items():
            columns[name] = [value] * count
        columns[KEPT_PER_LAYER_COLUMN] = [r.kept_ratio_per_layer for r in results]
        for name in TIMING_COLUMNS:  # filled in by __call__
            columns[name] = [None] * count
        assert tuple(columns)[: len(OUTPUT_COLUMNS)] == OUTPUT_COLUMNS
        return pa.Table.from_pydict(columns, schema=GENERATED_SCHEMA)


def kept_ratio_sums(table: pa.Table) -> tuple[np.ndarray | None, int]:
    """Per-layer sums of the kept ratios in `table` and how many rows had them."""
    values = [row for row in table.column(KEPT_PER_LAYER_COLUMN).to_pylist() if row]
    if not values:
        return None, 0
    return np.asarray(values, dtype=np.float64).sum(axis=0), len(values)
