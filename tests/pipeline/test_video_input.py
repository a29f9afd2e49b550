"""``resolve_video_input``: native or frames per family, the sampling, and the decode-time size."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import JobError
from pipeline.video_input import resolve_video_input
from pipeline.video_section import VideoSection
from zipvl.testing import tiny_model_path


@pytest.mark.parametrize(("family", "native", "multiple"), [
    ("llava", False, 1), ("llava_next", False, 1), ("llava_next_video", True, 1),
    ("llava_onevision", True, 1), ("qwen2_vl", True, 2), ("qwen2_5_vl", True, 2)])
def test_auto_reads_video_natively_where_the_family_can(family, native, multiple):
    video = resolve_video_input(VideoSection(), family)
    assert (video.native, video.sampling.frame_multiple) == (native, multiple)
    assert video.sampling.num_frames == 8 and video.sampling.fps is None
    assert video.frame_size is None  # no checkpoint given: frames keep their size


def test_frames_mode_is_frames_for_every_family_and_native_refuses_image_only_ones():
    frames = resolve_video_input(VideoSection(mode="frames"), "qwen2_vl")
    assert not frames.native and frames.sampling.frame_multiple == 1
    with pytest.raises(JobError, match="llava family reads images only"):
        resolve_video_input(VideoSection(mode="native"), "llava")


def test_fps_sampling_is_handed_on_with_its_cap():
    sampling = resolve_video_input(VideoSection(fps=2.5, max_frames=12), "qwen2_vl").sampling
    assert (sampling.num_frames, sampling.fps, sampling.max_frames, sampling.frame_multiple) == \
        (None, 2.5, 12, 2)


def test_the_frame_size_is_the_checkpoints_and_the_token_budget_shrinks_it():
    folder = tiny_model_path("qwen2_vl")
    settings = json.loads((folder / "video_preprocessor_config.json").read_text())
    factor = settings["patch_size"] * settings["merge_size"]
    uncapped = resolve_video_input(VideoSection(), "qwen2_vl", str(folder)).frame_size
    width, height = uncapped(640, 480, 8)
    assert width % factor == 0 and height % factor == 0
    assert width * height <= settings["size"]["longest_edge"]
    assert abs(width / height - 640 / 480) < 0.35
    # A budget of 8 tokens for 8 frames (4 temporal pairs) leaves each pair about 2.
    capped = resolve_video_input(VideoSection(max_video_tokens=8), "qwen2_vl", str(folder)).frame_size
    small_width, small_height = capped(640, 480, 8)
    assert small_width * small_height < width * height
    onevision = resolve_video_input(VideoSection(), "llava_onevision",
                                    str(tiny_model_path("llava_onevision"))).frame_size
    config = json.loads((tiny_model_path("llava_onevision") / "video_preprocessor_config.json")
                        .read_text())
    assert onevision(640, 480, 8) == (config["size"]["width"], config["size"]["height"])


def test_max_video_tokens_caps_the_loaded_processor_as_it_does_the_decode_size():
    from PIL import Image

    from pipeline.model_runner import load_processor
    from pipeline.prompts import limit_video_tokens

    folder = str(tiny_model_path("qwen2_vl"))
    patch = json.loads((tiny_model_path("qwen2_vl") / "video_preprocessor_config.json")
                       .read_text())["patch_size"]
    frames = [Image.new("RGB", (640, 480), (index * 20, 90, 30)) for index in range(8)]
    free, capped = (load_processor(folder, "qwen2_vl", {}) for _ in range(2))
    limit_video_tokens(free, "qwen2_vl", None)
    limit_video_tokens(capped, "qwen2_vl", 8)
    free_grid = free.video_processor([frames])["video_grid_thw"][0].tolist()
    capped_grid = capped.video_processor([frames])["video_grid_thw"][0].tolist()
    assert capped_grid[1] * capped_grid[2] < free_grid[1] * free_grid[2]
    # The decode stage sizes frames to exactly what the capped processor resizes them to.
    size = resolve_video_input(VideoSection(max_video_tokens=8), "qwen2_vl", folder).frame_size(
        640, 480, 8)
    assert size == (capped_grid[2] * patch, capped_grid[1] * patch)
