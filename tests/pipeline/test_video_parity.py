"""Our torchvision-free video processors against the stock transformers ones.

Runs where torchvision imports (``make test-video-parity`` builds ``.venv-torchvision``
for it); elsewhere it skips, unless ``ZIPVL_REQUIRE_TORCHVISION=1`` (set by that target),
which makes a skip a failure. Both processors read the same saved checkpoint. Ids, masks,
grids and ``second_per_grid_ts`` must be identical, pixels within 2 uint8 levels once
de-normalised (PIL's and torchvision's antialiased resampling round differently), and
greedy generation of the tiny model identical on both inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

from pipeline.families import torchvision_imports

if not torchvision_imports():
    if os.environ.get("ZIPVL_REQUIRE_TORCHVISION") == "1":
        raise RuntimeError("ZIPVL_REQUIRE_TORCHVISION=1 but torchvision does not import: the video "
                           "parity tests would be skipped")
    pytest.skip("the stock video processors need torchvision", allow_module_level=True)

from transformers import AutoModelForImageTextToText, AutoProcessor, AutoVideoProcessor  # noqa: E402

from pipeline.video import resized
from pipeline.video_processing import (  # noqa: E402
    VIDEO_FAMILIES,
    frame_size,
    load_processor_without_torchvision,
    load_video_processor,
)
from tests.pipeline.video_checkpoints import (  # noqa: E402
    CLIP_SHAPES,
    HAND_WRITTEN_CONFIGS,
    VIDEO_CONFIG_NAME,
    make_clip,
    video_checkpoint,
)
from zipvl.testing import SUPPORTED_FAMILIES, tiny_model_path  # noqa: E402

MAX_LEVELS = 2
TINY_VIDEO_FAMILIES = [family for family in VIDEO_FAMILIES if family in SUPPORTED_FAMILIES]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("video-parity")


def _config_folder(workspace, family, name, config):
    folder = workspace / f"{family}-{name}"
    folder.mkdir(exist_ok=True)
    if family in SUPPORTED_FAMILIES:  # AutoVideoProcessor may pick the class by model type
        shutil.copy(tiny_model_path(family) / "config.json", folder / "config.json")
    file_name = VIDEO_CONFIG_NAME if name == "video" else "preprocessor_config.json"
    (folder / file_name).write_text(json.dumps(config))
    return folder


def _plain(value):
    if hasattr(value, "items"):
        return {key: item for key, item in dict(value).items() if item is not None}
    if isinstance(value, list):
        return tuple(value)
    return value


LEGACY_CONFIGS = {  # an older checkpoint: only an image preprocessor config
    "qwen2_vl": {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 300, "max_pixels": 5000,
                 "patch_size": 8, "merge_size": 2, "temporal_patch_size": 2, "do_resize": None},
    # No image_processor_type: the stock loader would take LlavaNextImageProcessor for the
    # video processor "LlavaNextVideoProcessor", which is the processor, and recurse.
    "llava_next_video": {"size": 40, "crop_size": 36},
    "llava_onevision": {"image_processor_type": "LlavaOnevisionImageProcessor",
                        "size": {"height": 40, "width": 48}, "do_normalize": False},
}
LEGACY_CONFIGS["qwen2_5_vl"] = LEGACY_CONFIGS["qwen2_vl"]


@pytest.mark.parametrize("kind", ["video", "legacy"])
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_settings_are_what_the_stock_processor_holds(family, kind, workspace):
    config = HAND_WRITTEN_CONFIGS[family] if kind == "video" else LEGACY_CONFIGS[family]
    folder = _config_folder(workspace, family, kind, config)
    stock = AutoVideoProcessor.from_pretrained(str(folder))
    ours = load_video_processor(folder, family).settings
    assert type(stock).__name__ == ours.stock_class
    for field in dataclasses.fields(ours):
        if field.name in ("family", "stock_class"):
            continue
        assert _plain(getattr(ours, field.name)) == _plain(getattr(stock, field.name, None)), field.name


def _denormalised(pixels: torch.Tensor, mean, std, channel_axis: int) -> np.ndarray:
    shape = [1] * pixels.ndim
    shape[channel_axis] = -1
    mean = np.asarray(mean, dtype=np.float64).reshape(shape)
    std = np.asarray(std, dtype=np.float64).reshape(shape)
    return (pixels.double().numpy() * std + mean) * 255


def _assert_pixels_close(ours: torch.Tensor, stock: torch.Tensor, settings, qwen: bool):
    assert ours.shape == stock.shape and ours.dtype == stock.dtype
    if qwen:  # (patches, channels * temporal * patch * patch): channels outermost
        ours, stock = ours.reshape(ours.shape[0], 3, -1), stock.reshape(stock.shape[0], 3, -1)
        axis = 1
    else:  # (..., frames, channels, height, width)
        axis = ours.ndim - 3
    difference = np.abs(_denormalised(ours, settings.image_mean, settings.image_std, axis)
                        - _denormalised(stock, settings.image_mean, settings.image_std, axis))
    assert difference.max() <= MAX_LEVELS + 1e-3, difference.max()


def _batches(family):
    clips = [make_clip(*shape, seed=index) for index, shape in enumerate(CLIP_SHAPES)]
    batches = [[clip] for clip in clips]
    if family.startswith("qwen"):
        batches.append([clips[0], clips[1]])  # ragged: other sizes and frame counts
    else:
        batches.append([clips[0], make_clip(4, 90, 40, seed=9)])  # other sizes, same frame count
    return batches


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_processor_outputs_match_the_stock_ones(family, workspace):
    folder = _config_folder(workspace, family, "video", HAND_WRITTEN_CONFIGS[family])
    stock = AutoVideoProcessor.from_pretrained(str(folder))
    ours = load_video_processor(folder, family)
    qwen = family.startswith("qwen")
    for videos in _batches(family):
        metadata = [{"total_num_frames": 10 * len(clip), "fps": 5.0,
                     "frames_indices": list(range(0, 10 * len(clip), 10))} for clip in videos]
        kwargs = {"return_tensors": "pt", "return_metadata": True, "video_metadata": metadata}
        expected, got = stock(videos, **kwargs), ours(videos, **kwargs)
        assert set(got) == set(expected)
        if qwen:
            assert torch.equal(got["video_grid_thw"], expected["video_grid_thw"])
        assert [m.sampled_fps for m in got["video_metadata"]] == [m.sampled_fps for m in expected["video_metadata"]]
        _assert_pixels_close(got["pixel_values_videos"], expected["pixel_values_videos"], ours.settings, qwen)
        if qwen:
            assert ours.get_num_of_video_patches(len(videos[0]), videos[0][0].height, videos[0][0].width, {}) == \
                stock.get_num_of_video_patches(len(videos[0]), videos[0][0].height, videos[0][0].width, {})


QWEN_VIDEO_FAMILIES = [family for family in VIDEO_FAMILIES if family.startswith("qwen")]


@pytest.mark.parametrize("family", QWEN_VIDEO_FAMILIES)
def test_a_video_token_budget_caps_frames_as_the_stock_processor_does(family, workspace):
    folder = _config_folder(workspace, family, "video", HAND_WRITTEN_CONFIGS[family])
    stock = AutoVideoProcessor.from_pretrained(str(folder))
    ours = load_video_processor(folder, family)
    clip = make_clip(12, 200, 150, seed=5)
    free = stock([clip], return_tensors="pt", cap_pixels_per_frame=False)["video_grid_thw"]
    grids = set()
    # Set on the processor (what pipeline.prompts.limit_video_tokens does), then at call time.
    for processor in (stock, ours):
        processor.cap_pixels_per_frame, processor.max_video_tokens = True, 24
    for call in ({}, {"max_video_tokens": 8}):
        kwargs = {"return_tensors": "pt", "cap_pixels_per_frame": True, **call}
        expected, got = stock([clip], **kwargs), ours([clip], **kwargs)
        assert torch.equal(got["video_grid_thw"], expected["video_grid_thw"]), call
        _assert_pixels_close(got["pixel_values_videos"], expected["pixel_values_videos"], ours.settings, True)
        grids.add(tuple(expected["video_grid_thw"][0].tolist()))
    # The budgets bite: each gives a grid other than the uncapped one, and the two differ.
    assert len(grids) == 2 and tuple(free[0].tolist()) not in grids


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_frames_decoded_to_frame_size_give_the_stock_result(family, workspace):
    folder = _config_folder(workspace, family, "video", HAND_WRITTEN_CONFIGS[family])
    stock = AutoVideoProcessor.from_pretrained(str(folder))
    settings = load_video_processor(folder, family).settings
    qwen = family.startswith("qwen")
    for frames, width, height in CLIP_SHAPES:
        clip = make_clip(frames, width, height, seed=frames)
        target = frame_size(settings, width, height, frames)
        # What the decode stage hands on (pipeline.video resizes each frame to frame_size).
        predecoded = np.stack([np.asarray(resized(frame, target)) for frame in clip])
        direct = stock([clip], return_tensors="pt")
        downscaled = stock([predecoded], return_tensors="pt")
        if qwen:
            assert torch.equal(direct["video_grid_thw"], downscaled["video_grid_thw"])
        _assert_pixels_close(downscaled["pixel_values_videos"], direct["pixel_values_videos"], settings, qwen)


def _prompt(processor) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", TINY_VIDEO_FAMILIES)
def test_processor_inputs_and_generation_match_the_stock_ones(family, workspace):
    path = video_checkpoint(family, workspace)
    stock = AutoProcessor.from_pretrained(str(path))
    ours = load_processor_without_torchvision(str(path), family, {})
    assert type(stock.video_processor).__name__ == ours.video_processor.settings.stock_class
    for processor in (stock, ours):
        processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    qwen = family.startswith("qwen")
    for videos in _batches(family):
        text = [_prompt(stock)] * len(videos)
        metadata = [{"total_num_frames": 3 * len(clip), "fps": 6.0,
                     "frames_indices": list(range(0, 3 * len(clip), 3))} for clip in videos]
        kwargs = {"return_tensors": "pt", "padding": True, "videos_kwargs": {"video_metadata": metadata}}
        expected = stock(text=text, videos=videos, **kwargs)
        got = ours(text=text, videos=videos, **kwargs)
        assert set(got) == set(expected)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw"):
            if key in expected:
                assert torch.equal(got[key], expected[key]), key
        if "second_per_grid_ts" in expected:
            assert torch.equal(got["second_per_grid_ts"], expected["second_per_grid_ts"])
        _assert_pixels_close(got["pixel_values_videos"], expected["pixel_values_videos"],
                             ours.video_processor.settings, qwen)
        with torch.no_grad():
            generated = [model.generate(**inputs, max_new_tokens=6, do_sample=False)
                         for inputs in (expected, got)]
        assert torch.equal(generated[0], generated[1])
