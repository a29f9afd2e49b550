"""Video in the tiny kit: every video-capable checkpoint ships its stock video processor's
config, consistent with its image side and vision tower; the LLaVA video families read
hand-built ``pixel_values_videos`` with exactly the placeholder count the model checks.

The tests marked ``needs_torchvision`` load the saved checkpoints in the stock
processors (which need torchvision; skipped where it does not import) and compare
what they make of a clip with the hand-built inputs.
"""

from __future__ import annotations

import json
import os
from functools import cache

import pytest
import torch
from transformers import AutoProcessor

from zipvl.testing import (
    SUPPORTED_FAMILIES,
    VIDEO_FAMILIES,
    build_tiny_model,
    make_test_image,
    save_tiny_model,
    tiny_model_path,
    video_processor_config,
)
from zipvl.testing.processors import STOCK_PROCESSOR_NAMES
from zipvl.testing.video_configs import VIDEO_PROCESSOR_FILE
from zipvl.testing.video_inputs import (
    FRAME_VIDEO_FAMILIES,
    build_video_inputs,
    make_test_video,
    video_chat_messages,
)

NEW_TOKENS = 5
PROMPTS = ("Caption the video.", "What happens in these frames? Answer in one sentence.")


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # installed for another torch build fails at import, not only missing
        return False
    return True


# `make test-video-parity` sets ZIPVL_REQUIRE_TORCHVISION=1: there these tests must run
# (and fail on the import if torchvision is missing), never skip.
needs_torchvision = pytest.mark.skipif(
    not _torchvision_imports() and os.environ.get("ZIPVL_REQUIRE_TORCHVISION") != "1",
    reason="the stock video processors need torchvision")


@cache
def tiny(family: str):
    return build_tiny_model(family)


def _json(value):
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_exactly_the_video_families_save_a_video_processor_config(family, tmp_path):
    save_tiny_model(family, tmp_path)
    video_file = tmp_path / VIDEO_PROCESSOR_FILE
    assert video_file.is_file() == (family in VIDEO_FAMILIES)
    if family in VIDEO_FAMILIES:
        saved = json.loads(video_file.read_text())
        assert saved == _json(video_processor_config(family))
        processor_config = json.loads((tmp_path / "processor_config.json").read_text())
        assert saved["processor_class"] == processor_config["processor_class"]
        assert saved["processor_class"] == STOCK_PROCESSOR_NAMES[family]
    else:
        with pytest.raises(ValueError, match="reads no video"):
            video_processor_config(family)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_config_agrees_with_the_image_processor_and_the_vision_tower(family):
    model, processor = tiny(family)
    video = video_processor_config(family)
    image = processor.image_processor
    vision = model.config.vision_config
    assert video["image_mean"] == list(image.image_mean)
    assert video["image_std"] == list(image.image_std)
    assert video["rescale_factor"] == image.rescale_factor
    assert video["resample"] == int(image.resample)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        assert video["size"] == dict(image.size)
        assert video["patch_size"] == image.patch_size == vision.patch_size
        assert video["merge_size"] == image.merge_size == vision.spatial_merge_size
        assert video["temporal_patch_size"] == vision.temporal_patch_size
    elif family == "llava_next_video":
        assert video["size"] == dict(image.size)
        assert video["crop_size"] == dict(image.crop_size)
        assert video["crop_size"] == {"height": vision.image_size, "width": vision.image_size}
    else:
        assert video["size"] == dict(image.size)
        assert video["size"] == {"height": vision.image_size, "width": vision.image_size}


def _video_token_count(model, inputs) -> int:
    return (inputs["input_ids"] == model.config.video_token_id).sum().item()


@pytest.mark.parametrize("family", FRAME_VIDEO_FAMILIES)
def test_video_token_count_matches_the_video_features(family):
    model, processor = tiny(family)
    inputs = build_video_inputs(processor, family, PROMPTS[0], make_test_video(1, family))
    assert inputs["pixel_values_videos"].shape[:2] == (1, 8)
    assert 8 <= _video_token_count(model, inputs) <= 100  # tens of tokens for 8 frames
    with torch.no_grad():
        model(**inputs)  # would raise on a count mismatch

    # The model does check it: one placeholder short must fail.
    first = (inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0].item()
    keep = torch.ones_like(inputs["input_ids"][0], dtype=torch.bool)
    keep[first] = False
    short = {**inputs, "input_ids": inputs["input_ids"][:, keep],
             "attention_mask": inputs["attention_mask"][:, keep]}
    with pytest.raises((ValueError, RuntimeError, IndexError)), torch.no_grad():
        model(**short)


@pytest.mark.parametrize("family", FRAME_VIDEO_FAMILIES)
def test_every_frame_reaches_the_language_model(family):
    model, processor = tiny(family)
    frames = make_test_video(2, family)
    other_last = [*frames[:-1], make_test_video(3, family)[-1]]
    with torch.no_grad():
        logits = model(**build_video_inputs(processor, family, PROMPTS[0], frames)).logits
        other = model(**build_video_inputs(processor, family, PROMPTS[0], other_last)).logits
    assert not torch.allclose(logits[0, -1], other[0, -1])


@pytest.mark.parametrize("family", FRAME_VIDEO_FAMILIES)
def test_left_padded_video_batch_generation_matches_batch_size_one(family):
    model, processor = tiny(family)
    videos = [make_test_video(seed, family) for seed in range(len(PROMPTS))]
    batch = build_video_inputs(processor, family, list(PROMPTS), videos)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        batch_output = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    batch_new = batch_output[:, batch["input_ids"].shape[1]:]
    for index, prompt in enumerate(PROMPTS):
        single = build_video_inputs(processor, family, prompt, videos[index])
        with torch.no_grad():
            output = model.generate(**single, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert batch_new[index].tolist() == output[0, single["input_ids"].shape[1]:].tolist()


def test_build_video_inputs_rejects_what_it_cannot_build():
    _, processor = tiny("llava_onevision")
    frames = make_test_video(0, "llava_onevision")
    with pytest.raises(ValueError, match="must be 32 x 32 px"):
        build_video_inputs(processor, "llava_onevision", "hi", [*frames[:-1], make_test_image(0)])
    with pytest.raises(ValueError, match="same number of frames"):
        build_video_inputs(processor, "llava_onevision", ["a", "b"], [frames, frames[:4]])
    with pytest.raises(ValueError, match="2 prompts but 1 videos"):
        build_video_inputs(processor, "llava_onevision", ["a", "b"], [frames])
    with pytest.raises(ValueError, match="not 'qwen2_vl'"):
        build_video_inputs(tiny("qwen2_vl")[1], "qwen2_vl", "hi", frames)


# ---- the stock processors (torchvision) ---------------------------------------------------


def _stock_processor(family):
    path = tiny_model_path(family)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == STOCK_PROCESSOR_NAMES[family]
    video_processor = processor.video_processor
    expected = video_processor_config(family)
    assert type(video_processor).__name__ == expected["video_processor_type"]
    # Loaded and saved again, the stock class writes what the checkpoint holds.
    assert json.loads(video_processor.to_json_string()) == _json(
        {key: value for key, value in expected.items() if key != "processor_class"})
    return processor


@needs_torchvision
@pytest.mark.parametrize("family", FRAME_VIDEO_FAMILIES)
def test_the_stock_processor_reads_video_like_the_hand_built_inputs(family):
    model, processor = tiny(family)
    stock = _stock_processor(family)
    frames = make_test_video(4, family)
    text = stock.apply_chat_template(video_chat_messages(PROMPTS[0]), tokenize=False,
                                     add_generation_prompt=True)
    theirs = stock(text=[text], videos=[frames], add_special_tokens=False, return_tensors="pt")
    ours = build_video_inputs(processor, family, PROMPTS[0], frames)
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    # Frames already at the view size: resizing is (nearly) the identity.
    torch.testing.assert_close(theirs["pixel_values_videos"], ours["pixel_values_videos"],
                               rtol=0, atol=0.05)
    with torch.no_grad():
        output = model.generate(**theirs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert output.shape[1] > theirs["input_ids"].shape[1]


@needs_torchvision
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_the_stock_qwen_processor_reads_a_small_clip_as_tens_of_tokens(family):
    model, _ = tiny(family)
    stock = _stock_processor(family)
    frames = [make_test_image(50 + index, size=(64, 48)) for index in range(8)]
    text = stock.apply_chat_template(video_chat_messages(PROMPTS[0]), tokenize=False,
                                     add_generation_prompt=True)
    inputs = stock(text=[text], videos=[frames], add_special_tokens=False, return_tensors="pt")
    # 8 frames / temporal patch 2, 48 x 64 px / (patch 8 x merge 2) = 3 x 4 tokens each.
    assert inputs["video_grid_thw"].tolist() == [[4, 6, 8]]
    assert _video_token_count(model, inputs) == 4 * 3 * 4
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_the_image_only_processors_refuse_videos_rather_than_drop_them(family):
    _, processor = tiny(family)
    text = processor.apply_chat_template(video_chat_messages("hi"), tokenize=False,
                                         add_generation_prompt=True)
    # Without the check the stock call drops the video and keeps one bare placeholder.
    with pytest.raises(ValueError, match="image-only"):
        processor(text=[text], videos=[make_test_video(0, "llava_onevision")])
