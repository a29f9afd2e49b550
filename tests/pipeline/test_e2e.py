"""End to end on Ray: the shipped sample (tiny LLaVA) and generated videos + questions (tiny Qwen2-VL).

The reference for every output is the same checkpoint run directly with
transformers, one row at a time (batch size 1, greedy), its inputs built by
``zipvl.testing.build_inputs`` rather than the pipeline's own prompt code:
batching, left padding, ragged ZipVL caches, the decode stage's frame
transport and the Ray plumbing must not change a single token.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import zipvl
from pipeline.errors import JobError
from pipeline.job_file import load_job
from pipeline.report import REPORT_NAME, RUNS_DIR
from pipeline.runner import run_job
from pipeline.sample_data import BROKEN_ROWS, DEFAULT_DIR, IMAGE_TYPE
from pipeline.video import FrameSampling, decode_video
from tests.conftest import ACCELERATOR, CAPTIONS_JOB, JobRun, read_output
from zipvl.testing import build_inputs, load_processor, tiny_model_path

SAMPLE = DEFAULT_DIR / "images.parquet"
SAMPLE_VIDEOS = DEFAULT_DIR / "videos.parquet"


def reference_model(family: str, zipvl_config):
    """The tiny checkpoint loaded straight from disk, patched as the job asks."""
    from transformers import AutoModelForImageTextToText

    path = tiny_model_path(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    if zipvl_config is not None:
        zipvl.enable(model, zipvl_config)
    return model, load_processor(path)


@torch.inference_mode()
def generate_one(
    model, processor, family: str, prompt: str, images, max_new_tokens: int, patched: bool = True
) -> dict:
    """One row, batch size 1, greedy; `patched`: the model runs ZipVL (report its kept ratio)."""
    inputs = build_inputs(processor, family, prompt, images)
    sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = sequences[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    length = new_tokens.index(eos) + 1 if eos in new_tokens else len(new_tokens)
    result = {
        "output": processor.batch_decode([new_tokens], skip_special_tokens=True)[0].strip(),
        "prompt_tokens": inputs["input_ids"].shape[1],
        "output_tokens": length,
    }
    if patched:
        result["kept_ratio"] = float(zipvl.stats(model).kept_ratio.mean())
    return result


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {row["id"]: row for row in table.to_pylist()}


# ------------------------------------------------------------------ the shipped sample


def test_shipped_sample_is_what_the_generator_writes(tmp_path: Path):
    from pipeline.sample_data import write_samples

    for generated in write_samples(tmp_path):
        if generated.name == "videos.parquet":  # libx264's bytes vary run to run
            assert [clip_facts(cell) for cell in pq.read_table(generated).column("video").to_pylist()] \
                == [clip_facts(cell) for cell in pq.read_table(SAMPLE_VIDEOS).column("video").to_pylist()]
            continue
        assert pq.read_table(generated).equals(pq.read_table(DEFAULT_DIR / generated.name)), generated.name
    assert sum(path.stat().st_size for path in DEFAULT_DIR.iterdir()) < 1024**2


def clip_facts(data: bytes) -> tuple:
    """What a sample clip holds: its streams' codecs, its frame size and count."""
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            streams = tuple(stream.codec_context.name for stream in container.streams)
            if not container.streams.video:
                return streams, None, None
            stream = container.streams.video[0]
            return streams, (stream.width, stream.height), sum(1 for _ in container.decode(stream))
    except av.error.FFmpegError as error:  # the truncated clip
        return (type(error).__name__,)


def test_every_input_id_appears_exactly_once(sample_caption_run: JobRun):
    input_ids = pq.read_table(SAMPLE, columns=["id"]).column("id").to_pylist()
    output_ids = sample_caption_run.table.column("id").to_pylist()
    assert len(output_ids) == len(set(output_ids))
    assert sorted(output_ids) == sorted(input_ids)


def test_broken_images_become_error_rows_with_messages(sample_caption_run: JobRun):
    rows = rows_by_id(sample_caption_run.table)
    expected_messages = {"truncated": "truncated", "not_an_image": "not an image", "null": "empty (null)"}
    broken_ids = {f"img-{position:04d}": damage for position, damage in BROKEN_ROWS.items()}
    for row_id, damage in broken_ids.items():
        row = rows[row_id]
        assert row["status"] == "error" and row["output"] is None
        assert expected_messages[damage] in row["error"], row["error"]
    assert all(row["status"] == "ok" for row_id, row in rows.items() if row_id not in broken_ids)


def test_ok_rows_have_text_token_counts_and_kept_ratio(sample_caption_run: JobRun):
    spec = sample_caption_run.spec
    for row in sample_caption_run.table.to_pylist():
        assert row["model"] == "tiny:llava"
        assert json.loads(row["method"]) == spec.zipvl_config().to_dict()
        if row["status"] != "ok":
            continue
        assert row["output"] and row["error"] is None
        assert row["prompt_tokens"] > 0
        assert 0 < row["output_tokens"] <= spec.generation.max_new_tokens
        assert 0 < row["kept_ratio"] < 1  # the sample overrides make ZipVL drop tokens


def test_outputs_equal_direct_generation_one_row_at_a_time(sample_caption_run: JobRun):
    spec = sample_caption_run.spec
    model, processor = reference_model("llava", spec.zipvl_config())
    rows = rows_by_id(sample_caption_run.table)
    checked = 0
    for source in pq.read_table(SAMPLE).to_pylist():
        row = rows[source["id"]]
        if row["status"] != "ok":
            continue
        image = Image.open(io.BytesIO(source["image"]["bytes"])).convert("RGB")
        expected = generate_one(model, processor, "llava", spec.task.prompt, [image],
                                spec.generation.max_new_tokens)
        assert row["output"] == expected["output"], source["id"]
        assert row["prompt_tokens"] == expected["prompt_tokens"], source["id"]
        assert row["output_tokens"] == expected["output_tokens"], source["id"]
        assert row["kept_ratio"] == pytest.approx(expected["kept_ratio"], rel=1e-9), source["id"]
        checked += 1
    assert checked == pq.read_metadata(SAMPLE).num_rows - len(BROKEN_ROWS)


def test_report_counts_match_the_rows(sample_caption_run: JobRun):
    report, table = sample_caption_run.report, sample_caption_run.table
    on_disk = json.loads((sample_caption_run.output_dir / REPORT_NAME).read_text())
    assert on_disk["counts"] == report["counts"]
    statuses = table.column("status").to_pylist()
    assert report["counts"] == {
        "input_rows": pq.read_metadata(SAMPLE).num_rows,
        "skipped_by_resume": 0,
        "processed": len(statuses),
        "ok": statuses.count("ok"),
        "error": statuses.count("error"),
    }
    assert report["throughput"]["output_tokens"] == sum(filter(None, table.column("output_tokens").to_pylist()))
    assert report["throughput"]["rows_per_second"] > 0 and report["wall_time_seconds"] > 0
    assert {"python", "torch", "transformers", "ray", "zipvl-batch"} <= set(report["versions"])
    assert report["job"]["model"]["preset"] == "tiny-llava"
    assert report["job"]["resolved"]["zipvl"] == sample_caption_run.spec.zipvl_config().to_dict()
    assert report["job_file"] == str(CAPTIONS_JOB)
    kept = report["kept_ratio"]
    assert len(kept["per_layer"]) == 2  # the tiny model's decoder layers
    ok_kept = [value for value in table.column("kept_ratio").to_pylist() if value is not None]
    assert kept["mean"] == pytest.approx(float(np.mean(ok_kept)))
    assert {sample["id"] for sample in report["error_samples"]} == {
        f"img-{position:04d}" for position in BROKEN_ROWS
    }


def test_output_folder_holds_only_whole_shards_and_the_report(sample_caption_run: JobRun):
    names = sorted(path.name for path in sample_caption_run.output_dir.iterdir())
    metadata_folder = REPORT_NAME.split("/")[0]
    shards = [name for name in names if name != metadata_folder]
    assert metadata_folder in names and (sample_caption_run.output_dir / REPORT_NAME).is_file()
    # The run metadata: the report, the job's fingerprint and the run's own report (the lock
    # is released, so gone).
    assert sorted(path.name for path in (sample_caption_run.output_dir / metadata_folder).iterdir()) \
        == ["fingerprint.json", "report.json", "runs"]
    (run_report,) = (sample_caption_run.output_dir / RUNS_DIR).iterdir()
    run = json.loads(run_report.read_text())
    assert (run["run_id"], run["state"], run["counts"]) == (
        sample_caption_run.report["run_id"], "finished", sample_caption_run.report["counts"])
    assert shards == sorted(sample_caption_run.report["output"]["shards_written"])
    rows_per_file = sample_caption_run.spec.output.rows_per_file
    sizes = [pq.read_metadata(sample_caption_run.output_dir / name).num_rows for name in shards]
    assert all(size == rows_per_file for size in sizes[:-1]) and 0 < sizes[-1] <= rows_per_file
    metadata = pq.read_schema(sample_caption_run.output_dir / shards[0]).metadata
    assert json.loads(metadata[b"zipvl_batch.method"]) == sample_caption_run.spec.zipvl_config().to_dict()
    assert json.loads(metadata[b"zipvl_batch.model"])["tiny"] == "llava"
    # Standard readers take the folder as it is: the report's underscore keeps it out.
    assert pq.read_table(sample_caption_run.output_dir).num_rows == sum(sizes)


# ------------------------------------------------------------------ generated videos, VQA, Qwen2-VL


VIDEO_TYPE = IMAGE_TYPE  # {bytes, path}, as Hugging Face datasets store media


def encode_video(num_frames: int, seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """An mp4 (H.264) of moving coloured blocks."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=6)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        base = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        for index in range(num_frames):
            pixels = np.roll(base, shift=3 * index, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def png(seed: int, size: tuple[int, int] = (56, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_media_dataset(folder: Path) -> dict[str, str]:
    """Images and videos as bytes and as relative paths, some broken; returns id -> expected status."""
    (folder / "media").mkdir(parents=True)
    (folder / "media" / "clip.mp4").write_bytes(encode_video(9, seed=2))
    (folder / "media" / "photo.png").write_bytes(png(3))
    rows = [
        ("video-bytes", None, {"bytes": encode_video(20, seed=1), "path": "a.mp4"}, "What moves?", "ok"),
        ("video-path", None, {"bytes": None, "path": "media/clip.mp4"}, "How many blocks?", "ok"),
        ("video-broken", None, {"bytes": b"\x00\x00\x00\x18ftypmp42 but no movie", "path": None}, "Q?", "error"),
        ("image-bytes", {"bytes": png(4), "path": "x.png"}, None, "What colour dominates?", "ok"),
        ("image-path", {"bytes": None, "path": "media/photo.png"}, None, "Is it noisy?", "ok"),
        ("no-media", None, None, "Anything?", "error"),
        ("no-question", {"bytes": png(5), "path": None}, None, None, "error"),
        ("image-missing-file", {"bytes": None, "path": "media/absent.png"}, None, "Where?", "error"),
        # Decodes fine, but Qwen2-VL's processor refuses aspect ratios over 200: a row
        # that fails inside the generate stage.
        ("image-too-thin", {"bytes": png(6, size=(1, 300)), "path": None}, None, "Tall?", "error"),
    ]
    table = pa.table(
        {
            "key": [row[0] for row in rows],
            "picture": pa.array([row[1] for row in rows], type=IMAGE_TYPE),
            "clip": pa.array([row[2] for row in rows], type=VIDEO_TYPE),
            "q": [row[3] for row in rows],
        }
    )
    pq.write_table(table.slice(0, 4), folder / "part-0.parquet")
    pq.write_table(table.slice(4), folder / "part-1.parquet")
    return {row[0]: row[4] for row in rows}


def test_videos_and_questions_with_qwen2_vl(ray_cluster, tmp_path: Path):
    data = tmp_path / "data"
    expected_status = write_media_dataset(data)
    output_dir = tmp_path / "out"
    spec = load_job(CAPTIONS_JOB, [
        f"input.path={data}",
        "input.columns.id=key",
        "input.columns.image=picture",
        "input.columns.video=clip",
        "input.columns.prompt=q",
        "task.type=vqa",
        "task.prompt='{question} Answer in a few words.'",  # quoted: a bare {...} is a YAML mapping
        "video.num_frames=4",
        "video.mode=frames",  # a video family told to read frames as images (tested natively in test_video_e2e)
        "model.preset=tiny-qwen2-vl",
        "zipvl.tau=0.9",
        "zipvl.keep_last=4",
        "zipvl.num_recent_probes=8",
        "zipvl.num_random_probes=8",
        "generation.max_new_tokens=6",
        "resources.workers=1",
        "resources.gpus_per_worker=0",
        f"resources.accelerator_resource={ACCELERATOR}",
        "resources.cpus_per_worker=0",
        "resources.batch_size=3",
        "output.rows_per_file=3",
        f"output.path={output_dir}",
        # Five of these nine rows are broken on purpose: error rows are the point here.
        "output.max_error_fraction=1",
    ])
    report = run_job(spec)
    table = read_output(output_dir)
    rows = rows_by_id(table)
    assert sorted(rows) == sorted(expected_status)
    assert {row_id: row["status"] for row_id, row in rows.items()} == expected_status
    assert "not a video PyAV can open" in rows["video-broken"]["error"]
    assert "question" in rows["no-question"]["error"]
    assert "not found" in rows["image-missing-file"]["error"]
    assert "aspect ratio" in rows["image-too-thin"]["error"]
    assert report["counts"]["ok"] == 4 and report["counts"]["error"] == 5
    kinds = {row_id: row["error_kind"] for row_id, row in rows.items() if row["status"] == "error"}
    assert kinds == {"video-broken": "media", "no-media": "media", "no-question": "prompt",
                     "image-missing-file": "missing_media", "image-too-thin": "preprocess"}
    assert report["errors_by_kind"] == {"media": 2, "prompt": 1, "missing_media": 1,
                                        "preprocess": 1}
    assert all(row["error_kind"] is None for row in rows.values() if row["status"] == "ok")

    model, processor = reference_model("qwen2_vl", spec.zipvl_config())
    source = rows_by_id(pa.concat_tables(pq.read_table(path) for path in sorted(data.glob("*.parquet")))
                                        .rename_columns(["id", "picture", "clip", "q"]))
    media = {
        "video-bytes": decode_video(source["video-bytes"]["clip"]["bytes"], FrameSampling(4)).frames,
        "video-path": decode_video((data / "media" / "clip.mp4").read_bytes(), FrameSampling(4)).frames,
        "image-bytes": [Image.open(io.BytesIO(source["image-bytes"]["picture"]["bytes"])).convert("RGB")],
        "image-path": [Image.open(data / "media" / "photo.png").convert("RGB")],
    }
    assert len(media["video-bytes"]) == 4
    for row_id, images in media.items():
        prompt = f"{source[row_id]['q']} Answer in a few words."
        expected = generate_one(model, processor, "qwen2_vl", prompt, images, spec.generation.max_new_tokens)
        row = rows[row_id]
        assert row["output"] == expected["output"], row_id
        assert row["prompt_tokens"] == expected["prompt_tokens"], row_id
        assert row["output_tokens"] == expected["output_tokens"], row_id
        assert row["kept_ratio"] == pytest.approx(expected["kept_ratio"], rel=1e-9), row_id
    # Four frames cost more prompt tokens than one image.
    assert rows["video-bytes"]["prompt_tokens"] > rows["image-bytes"]["prompt_tokens"]
    # No temporary shard is left behind: the run metadata folder is the only hidden name.
    assert [name for name in os.listdir(output_dir) if name.startswith(".")] == [".zipvl"]


# ------------------------------------------------------------------ jobs that cannot run


def test_problems_found_before_running_are_listed_by_field(tmp_path: Path):
    from pipeline.preflight import validate_job

    spec = load_job(CAPTIONS_JOB, [
        "input.columns.image=photo",
        "model.name_or_path=" + str(tmp_path / "no-such-checkpoint"),
        f"output.path={tmp_path / 'out'}",
    ])
    problems = validate_job(spec)
    assert any(line.startswith("input.columns.image:") and "'photo'" in line for line in problems), problems
    assert any(line.startswith("model.name_or_path:") for line in problems), problems
    missing_input = load_job(CAPTIONS_JOB, [f"input.path={tmp_path / 'absent'}", f"output.path={tmp_path}/o"])
    assert any("does not exist" in line for line in validate_job(missing_input))
    with pytest.raises(JobError, match="input.columns.image"):
        run_job(spec)


def test_a_model_that_fails_to_load_in_the_workers_fails_the_job(ray_cluster, tmp_path: Path):
    """Configuration fine (validation passes), weights missing: the actors fail, the job says why."""
    checkpoint = tmp_path / "weightless"
    checkpoint.mkdir()
    for source in tiny_model_path("llava").iterdir():
        if source.suffix != ".safetensors":
            (checkpoint / source.name).write_bytes(source.read_bytes())
    spec = load_job(CAPTIONS_JOB, [
        f"model.name_or_path={checkpoint}",
        f"output.path={tmp_path / 'out'}",
        "input.limit=4",
        f"resources.accelerator_resource={ACCELERATOR}",
        "resources.cpus_per_worker=0",
        "resources.gpus_per_worker=0",
    ])
    with pytest.raises(JobError, match="model.safetensors"):
        run_job(spec)
    assert not list((tmp_path / "out").glob("part-*"))


def test_existing_output_without_resume_is_refused(sample_caption_run: JobRun):
    spec = load_job(CAPTIONS_JOB, [f"output.path={sample_caption_run.output_dir}", "output.resume=false"])
    with pytest.raises(JobError, match="output.resume is false"):
        run_job(spec)


def test_workers_taking_every_cpu_fail_up_front_instead_of_hanging(ray_cluster, tmp_path: Path):
    """Reading and decoding need a CPU of their own; without one the job would wait forever."""
    import ray

    total_cpus = ray.cluster_resources()["CPU"]
    spec = load_job(CAPTIONS_JOB, [f"output.path={tmp_path / 'out'}",
                                   f"resources.workers={int(total_cpus)}",
                                   "resources.cpus_per_worker=1", "resources.gpus_per_worker=0"])
    with pytest.raises(JobError, match=r"^resources: .*cpus_per_worker"):
        run_job(spec)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("part-*"))


def test_a_private_ray_refuses_workers_its_accelerator_slots_cannot_all_hold(ray_cluster, tmp_path):
    """A private Ray never grows: workers it cannot all place fail at once, where a joined
    cluster (which may autoscale) lets them wait (``ray_setup.actor_start_timeout_s``)."""
    import ray

    from pipeline.ray_setup import worker_resources

    slots = ray.cluster_resources()[ACCELERATOR]
    spec = load_job(CAPTIONS_JOB, [f"output.path={tmp_path / 'out'}", "resources.gpus_per_worker=0",
                                   f"resources.workers={int(slots) + 1}", "resources.cpus_per_worker=0",
                                   f"resources.accelerator_resource={ACCELERATOR}"])
    with pytest.raises(JobError, match=rf"^resources.accelerator_resource: {int(slots) + 1} worker\(s\) "
                                       rf"need one '{ACCELERATOR}' each, but the Ray cluster has {slots:g}"):
        worker_resources(spec, joined_cluster=False)
    assert worker_resources(spec, joined_cluster=True).resources == {ACCELERATOR: 1.0}


def test_auto_gpus_on_a_joined_cluster_without_gpus_is_an_error_not_a_cpu_run(ray_cluster, tmp_path):
    # The session cluster has no GPU: its "GPU nodes are down". auto must not fall back to CPU.
    spec = load_job(CAPTIONS_JOB, [f"output.path={tmp_path / 'out'}", "input.limit=2"])
    assert spec.resources.gpus_per_worker == "auto"
    with pytest.raises(JobError, match=r"^resources.gpus_per_worker: auto, but the Ray cluster "
                                       r"this job joined has no GPU"):
        run_job(spec)
    assert not list((tmp_path / "out").glob("part-*"))


def test_decoding_stays_a_separate_stage_from_generation(ray_cluster, tmp_path: Path, capsys):
    """Same resources for both stages (a CPU-only job) must not fuse decoding into the actors."""
    import pyarrow as pa

    from pipeline.plan import plan_job
    from pipeline.ray_setup import ray_data_settings

    spec = load_job(CAPTIONS_JOB, [f"output.path={tmp_path / 'out'}", "resources.cpus_per_worker=1"])
    with ray_data_settings():
        plan = plan_job(spec, pa.array([], type=pa.string()))
        capsys.readouterr()
        plan.dataset.explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
    assert "ActorPoolMapOperator[MapBatches(GenerateStage)]" in optimized, optimized
    assert "MapBatches(DecodeStage)->MapBatches(GenerateStage)" not in optimized, optimized
    assert "DecodeStage" in optimized
    assert plan.input_rows == pq.read_metadata(SAMPLE).num_rows and plan.skipped == 0


def test_planning_raises_no_deprecation_warning(ray_cluster, tmp_path: Path):
    """Every run printed Ray's warning about the bounded-retry arguments, which Ray 2.60
    names no replacement for; the stages must still carry the retries."""
    import warnings

    import pyarrow as pa

    from pipeline.plan import plan_job
    from pipeline.ray_setup import ray_data_settings

    spec = load_job(CAPTIONS_JOB, [f"output.path={tmp_path / 'out'}"])
    with ray_data_settings(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_job(spec, pa.array([], type=pa.string()))
    assert not [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    operators = []
    operator = plan.dataset._logical_plan.dag
    while operator is not None:
        operators.append(operator)
        operator = operator.input_dependencies[0] if operator.input_dependencies else None
    remote_args = {op.name: getattr(op, "ray_remote_args", None) for op in operators}
    assert remote_args["MapBatches(DecodeStage)"]["max_retries"] >= 1, remote_args
    assert remote_args["MapBatches(GenerateStage)"]["max_task_retries"] >= 1, remote_args


def test_a_row_that_fails_to_generate_does_not_sink_its_batch():
    """The batch fails as a whole (one image is refused); the other rows are retried alone."""
    from pipeline.model_runner import GenerationSettings, generate_rows, load_model

    spec = load_job(CAPTIONS_JOB, ["model.preset=tiny-qwen2-vl", "zipvl=dense", "output.path=unused"])
    loaded = load_model(spec.model_settings(), None, "cpu")
    images = [Image.open(io.BytesIO(png(seed))).convert("RGB") for seed in (7, 8)]
    thin = Image.new("RGB", (1, 300), (10, 20, 30))
    prompts = ["Describe it.", "And this one?", "Last one."]
    results = generate_rows(loaded, prompts, [[images[0]], [thin], [images[1]]], GenerationSettings(max_new_tokens=6))
    assert results[1].output is None and "aspect ratio" in results[1].error
    assert results[1].error_kind == "preprocess"
    model, processor = reference_model("qwen2_vl", None)
    for result, prompt, image in [(results[0], prompts[0], images[0]), (results[2], prompts[2], images[1])]:
        expected = generate_one(model, processor, "qwen2_vl", prompt, [image], 6, patched=False)
        assert (result.error, result.output, result.output_tokens) == (None, expected["output"], expected["output_tokens"])


def test_the_thread_wait_finds_and_outlasts_ray_datas_threads(ray_cluster):
    """An upstream rename of a Ray Data thread would silently drop it from the wait: pin
    each name, as the runner iterates (whole blocks as pyarrow), and check that none is
    left after an early stop."""
    import threading

    import ray

    from pipeline.ray_setup import DATASET_THREAD_PREFIXES, wait_for_dataset_threads

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address, logging_level="WARNING")
    batches = iter(ray.data.range(64, override_num_blocks=8)
                   .iter_batches(batch_size=None, batch_format="pyarrow"))
    next(batches)  # stop early, as a failing job does

    def dataset_threads() -> list[str]:
        return sorted(thread.name for thread in threading.enumerate()
                      if thread.name.startswith(DATASET_THREAD_PREFIXES) and thread.is_alive())

    seen = dataset_threads()
    assert all(any(name.startswith(prefix) for name in seen) for prefix in DATASET_THREAD_PREFIXES), \
        [thread.name for thread in threading.enumerate()]
    batches.close()
    wait_for_dataset_threads()
    assert not dataset_threads()
