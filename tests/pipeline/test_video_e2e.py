"""Every video family end to end through the pipeline, reading the shipped clips natively.

Each family's tiny model captions the first clips of ``data/sample/videos.parquet``
(H.264 in MP4 and MPEG-TS, VP9, MPEG-4; 8 to 100 frames, four sizes, one truncated
file) in ragged batches, with ZipVL really dropping tokens. Every row is compared with
the same model run on that clip alone (batch size 1, decoded and preprocessed outside
Ray), its video-token count with the count the checkpoint's own configuration implies
(worked out here from the config files, not by the pipeline's code), and its
timestamps with PyAV's. Frames as images cost more tokens than the same frames as a
video, for every family.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.job_file import load_job
from pipeline.model_runner import GenerationSettings, generate_rows, load_model
from pipeline.prompts import RowMedia, build_model_inputs
from pipeline.runner import run_job
from pipeline.sample_data import DEFAULT_DIR
from pipeline.sample_videos import BROKEN_CLIPS
from pipeline.video import decode_video
from pipeline.video_input import resolve_video_input
from tests.conftest import ACCELERATOR, read_output
from zipvl.testing import tiny_model_path

REPO_ROOT = Path(__file__).resolve().parents[2]
VIDEO_JOB = REPO_ROOT / "jobs" / "video-captions.yaml"
CLIPS = DEFAULT_DIR / "videos.parquet"
ROWS = 7  # the first seven clips: ragged in length, size and codec, one truncated
PRESETS = {"qwen2_vl": "tiny-qwen2-vl", "qwen2_5_vl": "tiny-qwen2.5-vl",
           "llava_next_video": "tiny-llava-next-video", "llava_onevision": "tiny-llava-onevision"}


def expected_video_tokens(family: str, num_frames: int, width: int, height: int) -> int:
    """Visual tokens of one video, from the tiny checkpoint's config files alone."""
    folder = tiny_model_path(family)
    video = json.loads((folder / "video_preprocessor_config.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    patch = config["vision_config"]["patch_size"]
    if family.startswith("qwen"):
        merge, temporal = video["merge_size"], video["temporal_patch_size"]
        return math.ceil(num_frames / temporal) * (height // patch) * (width // patch) // merge**2
    if family == "llava_next_video":
        side = video["crop_size"]["height"] // patch // config["spatial_pool_stride"]
        return num_frames * side * side
    side = math.ceil(video["size"]["height"] // patch / 2)  # OneVision pools 2x2, rounding up
    return num_frames * side * side + 1  # and ends each video with a newline token


def video_token_id(family: str) -> int:
    config = json.loads((tiny_model_path(family) / "config.json").read_text())
    return config["video_token_id"] if "video_token_id" in config else config["video_token_index"]


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_a_video_family_reads_ragged_clips_natively(ray_cluster, tmp_path: Path, family: str):
    output_dir = tmp_path / "out"
    spec = load_job(VIDEO_JOB, [
        f"input.path={CLIPS}",
        f"input.limit={ROWS}",
        f"model.preset={PRESETS[family]}",
        "video.num_frames=6",
        "zipvl.tau=0.9",
        "zipvl.keep_last=4",
        "zipvl.num_recent_probes=8",
        "zipvl.num_random_probes=8",
        "generation.max_new_tokens=6",
        "resources.gpus_per_worker=0",
        f"resources.accelerator_resource={ACCELERATOR}",
        "resources.cpus_per_worker=0",
        "resources.batch_size=3",
        f"output.path={output_dir}",
        "output.max_error_fraction=0.5",
    ])
    run_job(spec)
    rows = {row["id"]: row for row in read_output(output_dir).to_pylist()}
    clips = pq.read_table(CLIPS).slice(0, ROWS).to_pylist()
    assert sorted(rows) == sorted(clip["id"] for clip in clips)

    settings = spec.model_settings()
    loaded = load_model(settings, spec.zipvl_config(), "cpu")
    video = resolve_video_input(spec.video, family, str(tiny_model_path(family)))
    assert video.native
    generation = GenerationSettings(max_new_tokens=spec.generation.max_new_tokens)
    for index, clip in enumerate(clips):
        row = rows[clip["id"]]
        if index in BROKEN_CLIPS:
            assert row["status"] == "error" and row["error_kind"] == "media", row
            assert row["frame_timestamps"] is None
            continue
        decoded = decode_video(clip["video"], video.sampling, frame_size=video.frame_size)
        media = RowMedia(video=tuple(decoded.frames), sampled_fps=decoded.sampled_fps)
        alone = generate_rows(loaded, [spec.task.prompt], [media], generation)[0]
        assert row["status"] == "ok", row
        assert (row["output"], row["prompt_tokens"], row["output_tokens"]) == \
            (alone.output, alone.prompt_tokens, alone.output_tokens), clip["id"]
        assert row["kept_ratio"] == pytest.approx(alone.kept_ratio, rel=1e-9)
        assert row["kept_ratio"] < 1.0
        assert row["frame_timestamps"] == decoded.timestamps
        assert row["video_duration"] == pytest.approx(decoded.duration)
        # The native count, and more tokens for the same frames as images.
        inputs = build_model_inputs(loaded.processor, [spec.task.prompt], [media])
        width, height = decoded.frames[0].size
        assert int((inputs["input_ids"] == video_token_id(family)).sum()) == \
            expected_video_tokens(family, len(decoded.frames), width, height)
        as_images = build_model_inputs(loaded.processor, [spec.task.prompt],
                                       [RowMedia(images=tuple(decoded.frames))])
        assert as_images["input_ids"].shape[1] > inputs["input_ids"].shape[1]
