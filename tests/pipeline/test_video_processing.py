"""Our torchvision-free video processors, where no stock one can run: settings resolved as
``from_pretrained`` resolves them, outputs consistent with their own token counts and with
an independent reading of the patch layout, and ``frame_size`` making the resize an identity.
The comparison with the stock processors is ``test_video_parity.py``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.image_only_processors import IMAGE_ONLY_PROCESSORS
from pipeline.media import MediaError
from pipeline.video_processing import (
    VIDEO_FAMILIES,
    LlavaVideoProcessor,
    QwenVLVideoProcessor,
    frame_size,
    load_processor_without_torchvision,
    load_video_settings,
    settings_from_dict,
)
from pipeline.video_processing.frames import resize_video
from tests.pipeline.video_checkpoints import (
    CLIP_SHAPES,
    HAND_WRITTEN_CONFIGS,
    VIDEO_CONFIG_NAME,
    make_clip,
    video_checkpoint,
)

QWEN = ("qwen2_vl", "qwen2_5_vl")
PROMPT = "<|vision_start|><|video_pad|><|vision_end|>Describe."


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("video-checkpoints")


# --- settings -------------------------------------------------------------------------

def test_qwen_min_and_max_pixels_become_the_size_dict():
    settings = settings_from_dict("qwen2_vl", {"min_pixels": 100, "max_pixels": 900,
                                               "size": {"min_pixels": 1, "max_pixels": 2}})
    assert settings.size == {"shortest_edge": 100, "longest_edge": 900}
    settings = settings_from_dict("qwen2_vl", {"max_pixels": 900})
    assert settings.size == {"shortest_edge": 128 * 28 * 28, "longest_edge": 900}


def test_absent_keys_take_the_stock_class_defaults_and_null_ones_stay_null():
    settings = settings_from_dict("qwen2_5_vl", {"patch_size": 8, "do_resize": None, "size": None})
    assert (settings.patch_size, settings.merge_size, settings.temporal_patch_size) == (8, 2, 2)
    assert settings.do_resize is None and settings.size == {"shortest_edge": 128 * 28 * 28,
                                                            "longest_edge": 28 * 28 * 768}
    assert settings.stock_class == "Qwen2VLVideoProcessor" and settings.do_sample_frames is False
    next_video = settings_from_dict("llava_next_video", {})
    assert next_video.size == {"shortest_edge": 224} and next_video.crop_size == {"height": 224, "width": 224}
    onevision = settings_from_dict("llava_onevision", {"size": 48})
    # default_to_square is False for OneVision: an int size is a shortest edge.
    assert onevision.size == {"shortest_edge": 48} and onevision.do_center_crop is None


def test_another_video_processor_class_is_refused():
    with pytest.raises(ValueError, match="LlavaOnevisionVideoProcessor"):
        settings_from_dict("qwen2_vl", {"video_processor_type": "LlavaOnevisionVideoProcessor"})


def test_config_files_are_read_in_the_stock_order(tmp_path):
    def write(name, content):
        (tmp_path / name).write_text(json.dumps(content))

    with pytest.raises(OSError, match="no video processor config"):
        load_video_settings(tmp_path, "qwen2_vl")
    write("preprocessor_config.json", {"patch_size": 4, "image_processor_type": "Qwen2VLImageProcessor"})
    assert load_video_settings(tmp_path, "qwen2_vl").patch_size == 4
    write(VIDEO_CONFIG_NAME, {"patch_size": 6})
    assert load_video_settings(tmp_path, "qwen2_vl").patch_size == 6
    write("processor_config.json", {"image_processor": {"patch_size": 10}})
    assert load_video_settings(tmp_path, "qwen2_vl").patch_size == 6  # no nested video entry
    write("processor_config.json", {"video_processor": {"patch_size": 12}})
    assert load_video_settings(tmp_path, "qwen2_vl").patch_size == 12
    assert load_video_settings(tmp_path / VIDEO_CONFIG_NAME, "qwen2_vl").patch_size == 6


def test_a_hub_id_not_in_the_cache_is_not_downloaded(tmp_path):
    with pytest.raises(OSError):
        load_video_settings("nobody/no-such-model", "qwen2_vl",
                            {"local_files_only": True, "cache_dir": str(tmp_path)})


# --- Qwen -----------------------------------------------------------------------------

def _qwen_processor(family, workspace):
    return load_processor_without_torchvision(str(video_checkpoint(family, workspace)), family, {})


@pytest.mark.parametrize("family", QWEN)
def test_qwen_token_counts_agree_with_the_grid_and_the_patch_count(family, workspace):
    processor = _qwen_processor(family, workspace)
    assert type(processor) is IMAGE_ONLY_PROCESSORS[family]
    video_processor = processor.video_processor
    clips = [make_clip(*shape, seed=index) for index, shape in enumerate(CLIP_SHAPES)]
    inputs = processor(text=[PROMPT] * len(clips), videos=clips, return_tensors="pt", padding=True)
    merge = video_processor.merge_size ** 2
    grids = inputs["video_grid_thw"]
    assert grids.shape == (len(clips), 3)
    for row, ((frames, width, height), grid) in enumerate(zip(CLIP_SHAPES, grids)):
        expected_patches = video_processor.get_num_of_video_patches(frames, height, width, {})
        assert int(grid.prod()) == expected_patches
        assert int(grid[0]) == math.ceil(frames / video_processor.temporal_patch_size)
        pads = int((inputs["input_ids"][row] == processor.video_token_id).sum())
        assert pads == expected_patches // merge
        assert int((inputs["mm_token_type_ids"][row] == 2).sum()) == pads
    assert inputs["pixel_values_videos"].shape == (
        int(grids.prod(dim=1).sum()),
        3 * video_processor.temporal_patch_size * video_processor.patch_size ** 2)
    counts = processor._get_num_multimodal_tokens(video_sizes=[(f, h, w) for f, w, h in CLIP_SHAPES])
    assert counts.num_video_tokens == [int(g.prod()) // merge for g in grids]


def test_qwen_patches_hold_the_normalised_frames_in_the_stock_layout(workspace):
    processor = _qwen_processor("qwen2_vl", workspace).video_processor
    settings = processor.settings
    # Frames already at their processed size: the resize is an identity, the layout is the question.
    width, height = frame_size(settings, 70, 50, 3)
    clip = make_clip(3, width, height, seed=4)
    out = processor([clip], return_tensors="pt")
    grid_t, grid_h, grid_w = out["video_grid_thw"][0].tolist()
    assert (grid_h * processor.patch_size, grid_w * processor.patch_size) == (height, width)
    frames = np.stack([np.asarray(frame) for frame in clip])
    frames = np.concatenate([frames, frames[-1:]])  # the odd count padded with the last frame
    mean, std = np.array(settings.image_mean), np.array(settings.image_std)
    expected = (frames / 255.0 - mean) / std  # (t, h, w, c), float64
    patches = out["pixel_values_videos"].numpy()
    patch, merge, temporal = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    # Row order: time, merged block row, block column, row inside the block, column inside it;
    # each row holds channel, then frame in the temporal pair, then pixel row and column.
    index = 0
    for t in range(grid_t):
        for block_row in range(grid_h // merge):
            for block_col in range(grid_w // merge):
                for inner_row in range(merge):
                    for inner_col in range(merge):
                        top = (block_row * merge + inner_row) * patch
                        left = (block_col * merge + inner_col) * patch
                        window = expected[t * temporal:(t + 1) * temporal, top:top + patch, left:left + patch]
                        np.testing.assert_allclose(patches[index], window.transpose(3, 0, 1, 2).ravel(),
                                                   atol=1e-4)
                        index += 1
    assert index == len(patches)


def test_qwen2_5_seconds_per_grid_step_follow_the_metadata(workspace):
    processor = _qwen_processor("qwen2_5_vl", workspace)
    clips = [make_clip(4, 64, 48, seed=1), make_clip(3, 40, 90, seed=2)]
    default = processor(text=[PROMPT] * 2, videos=clips, return_tensors="pt", padding=True)
    assert default["second_per_grid_ts"].tolist() == pytest.approx([2 / 24, 2 / 24])
    metadata = [{"total_num_frames": 40, "fps": 10.0, "frames_indices": [0, 10, 20, 30]},
                {"total_num_frames": 3, "fps": 6.0}]
    timed = processor(text=[PROMPT] * 2, videos=clips, videos_kwargs={"video_metadata": metadata},
                      return_tensors="pt", padding=True)
    # sampled fps: 4 of 40 frames at 10 fps -> 1 fps; all of 3 frames at 6 fps -> 6 fps.
    assert timed["second_per_grid_ts"].tolist() == pytest.approx([2 / 1.0, 2 / 6.0])
    assert "video_metadata" not in timed


def test_qwen_cap_pixels_per_frame_bounds_a_long_video():
    config = {**HAND_WRITTEN_CONFIGS["qwen2_vl"], "max_video_tokens": 100}
    processor = QwenVLVideoProcessor(settings_from_dict("qwen2_vl", config))
    clip = make_clip(40, 200, 150, seed=3)
    free = processor([clip], cap_pixels_per_frame=False)["video_grid_thw"][0]
    factor = processor.patch_size * processor.merge_size
    pixels = processor.patch_size ** 2

    def limit(budget):
        return max(min(48 * 48, int(budget * factor * factor * 0.9) * 2 // 40), int(16 * 16 * 1.05))

    # The budget is the call's max_video_tokens where given (transformers 5.25), else the processor's.
    capped = processor([clip], cap_pixels_per_frame=True)["video_grid_thw"][0]
    tighter = processor([clip], cap_pixels_per_frame=True, max_video_tokens=40)["video_grid_thw"][0]
    unset = processor([clip], cap_pixels_per_frame=True, max_video_tokens=None)["video_grid_thw"][0]
    loose = processor([clip], cap_pixels_per_frame=True, max_video_tokens=10**6)["video_grid_thw"][0]
    assert int(tighter[1] * tighter[2]) * pixels <= limit(40) < int(capped[1] * capped[2]) * pixels
    assert int(capped[1] * capped[2]) * pixels <= limit(100) < int(free[1] * free[2]) * pixels
    assert torch.equal(unset, capped) and torch.equal(loose, free)
    assert capped[0] == free[0] == tighter[0] == 20


def test_bad_video_input_is_a_media_error(workspace):
    processor = _qwen_processor("qwen2_vl", workspace).video_processor
    with pytest.raises(MediaError, match="float"):
        processor([np.zeros((2, 16, 16, 3), dtype=np.float32)])
    with pytest.raises(MediaError, match="shape"):
        processor([np.zeros((2, 16, 16, 5), dtype=np.uint8)])
    with pytest.raises(ValueError, match="do_sample_frames"):
        processor([np.zeros((2, 16, 16, 3), dtype=np.uint8)], do_sample_frames=True)
    with pytest.raises(TypeError, match="unknown"):
        processor([np.zeros((2, 16, 16, 3), dtype=np.uint8)], crop_me=True)


# --- frame_size -----------------------------------------------------------------------

@pytest.mark.parametrize("family", [*QWEN, "llava_next_video", "llava_onevision"])
@pytest.mark.parametrize("shape", CLIP_SHAPES)
def test_decoding_to_frame_size_makes_the_resize_an_identity(family, shape):
    settings = settings_from_dict(family, HAND_WRITTEN_CONFIGS[family])
    processor = QwenVLVideoProcessor(settings) if settings.is_qwen else LlavaVideoProcessor(settings)
    frames, width, height = shape
    clip = make_clip(frames, width, height, seed=7)
    target = frame_size(settings, width, height, frames)
    # The decoder's one downscale (here the processor's own resampling).
    predecoded = resize_video(np.stack([np.asarray(frame) for frame in clip]), target[1], target[0], 3)
    direct = processor([clip], return_tensors="pt")
    downscaled = processor([predecoded], return_tensors="pt")
    assert set(direct) == set(downscaled)
    for key in direct:
        assert torch.equal(direct[key], downscaled[key]), key
    # and the second resize really was an identity: the frames are already the target size
    assert frame_size(settings, *target, frames) == target


def test_frame_size_is_the_fixed_size_for_onevision_and_the_short_edge_for_next_video():
    onevision = settings_from_dict("llava_onevision", HAND_WRITTEN_CONFIGS["llava_onevision"])
    assert frame_size(onevision, 640, 360, 8) == (32, 32)
    next_video = settings_from_dict("llava_next_video", HAND_WRITTEN_CONFIGS["llava_next_video"])
    assert frame_size(next_video, 640, 360, 8) == (56, 32)
    assert frame_size(next_video, 360, 640, 8) == (32, 56)


# --- every video family, with its tiny model as the judge -------------------------------

def _video_prompt(processor) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_the_tiny_model_accepts_our_video_inputs(family, workspace):
    from transformers import AutoModelForImageTextToText

    path = video_checkpoint(family, workspace)
    processor = load_processor_without_torchvision(str(path), family, {})
    assert type(processor) is IMAGE_ONLY_PROCESSORS[family]
    processor.tokenizer.padding_side = "left"
    # The same frame count in both: LLaVA's pixel_values_videos stack to one tensor.
    clips = [make_clip(4, 64, 48, seed=1), make_clip(4, 40, 90, seed=2)]
    inputs = processor(text=[_video_prompt(processor)] * 2, videos=clips, return_tensors="pt", padding=True)
    video_tokens = (inputs["input_ids"] == processor.video_token_id).sum(dim=1)
    assert video_tokens[0] == video_tokens[1] > 0
    if not family.startswith("qwen"):
        assert inputs["pixel_values_videos"].shape[:3] == (2, 4, 3)
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    with torch.no_grad():
        # The model checks that its video features fill exactly the video placeholders.
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2
