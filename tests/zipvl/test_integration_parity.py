"""ZipVL patched into every supported family: tau = 1.0 equals the unpatched model, and
``disable`` / repeated ``enable`` leave no trace (ZIPVL.md invariants 1 and 5), on image
prompts and, for the LLaVA video families, on video prompts (``pixel_values_videos``)."""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import zipvl
from zipvl.config import PREFILL_MODES
from zipvl.testing import (
    SUPPORTED_FAMILIES,
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    make_test_image,
)
from zipvl.testing.video_inputs import FRAME_VIDEO_FAMILIES, build_video_inputs, make_test_video

WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing near "
         "the old river and two cats watch from the warm red roof").split()
NEW_TOKENS = 6


def _prompt(num_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def _batch(family: str, processor, word_counts=(70, 25)):
    prompts = [_prompt(count, seed) for seed, count in enumerate(word_counts)]
    images = None
    if family in VISION_FAMILIES:
        images = [[make_test_image(10 * sample + k) for k in range(sample + 1)]
                  for sample in range(len(prompts))]
    return build_inputs(processor, family, prompts, images)


def _video_batch(family: str, processor, word_counts=(40, 12)):
    """A left-padded batch of prompts with one 8-frame video each."""
    prompts = [_prompt(count, seed) for seed, count in enumerate(word_counts)]
    videos = [make_test_video(seed, family) for seed in range(len(prompts))]
    return build_video_inputs(processor, family, prompts, videos)


# (family, media): every family with its images (none for text families), and the
# families that take pixel_values_videos with a video each.
CASES = [pytest.param(family, "images", id=family) for family in SUPPORTED_FAMILIES] + [
    pytest.param(family, "video", id=f"{family}-video") for family in FRAME_VIDEO_FAMILIES]


@contextmanager
def _patched(model, config):
    zipvl.enable(model, config)
    try:
        yield model
    finally:
        zipvl.disable(model)


def _run(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return logits, tokens


_REFERENCES: dict[str, tuple] = {}


def _reference(family: str, media: str = "images"):
    """The tiny model, a left-padded batch and the unpatched model's logits and greedy tokens."""
    key = f"{family}-{media}"
    if key not in _REFERENCES:
        model, processor = build_tiny_model(family)
        inputs = _batch(family, processor) if media == "images" else _video_batch(family, processor)
        assert inputs["attention_mask"].min() == 0, "the batch must contain padding"
        _REFERENCES[key] = (model, inputs, *_run(model, inputs))
    return _REFERENCES[key]


@pytest.mark.parametrize("mode", PREFILL_MODES)
@pytest.mark.parametrize("family, media", CASES)
def test_tau_one_equals_unpatched_model(family, media, mode):
    model, inputs, dense_logits, dense_tokens = _reference(family, media)
    with _patched(model, zipvl.ZipVLConfig(tau=1.0, prefill=mode)):
        logits, tokens = _run(model, inputs)
        stats = zipvl.stats(model)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], dense_logits[valid], rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens, dense_tokens)
    assert (stats.kept_ratio == 1.0).all()
    assert stats.cache_bytes == stats.dense_cache_bytes > 0


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_tau_one_without_cache_equals_unpatched_model(family):
    model, inputs, dense_logits, _ = _reference(family)
    with _patched(model, zipvl.ZipVLConfig(tau=1.0, prefill="qkv")), torch.no_grad():
        output = model(**inputs, use_cache=False)
    assert zipvl.returned_cache(output) is None
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(output.logits[valid], dense_logits[valid], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family, media", CASES)
def test_disable_restores_dense_outputs_exactly(family, media):
    model, inputs, dense_logits, dense_tokens = _reference(family, media)
    decoder = model.get_decoder()
    hooks_before = len(decoder._forward_pre_hooks)
    vision_config = getattr(model.config, "vision_config", None)
    vision_before = vision_config._attn_implementation if vision_config is not None else None
    text_before = decoder.config._attn_implementation

    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.5, keep_last=4, num_recent_probes=8,
                                          num_random_probes=8))
    assert decoder.config._attn_implementation == "zipvl"
    if vision_config is not None:
        assert vision_config._attn_implementation == vision_before, "the vision tower must stay dense"
    with torch.no_grad():
        sparse_logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert not torch.allclose(sparse_logits[valid], dense_logits[valid]), "the patch had no effect"
    assert (zipvl.stats(model).kept_ratio < 1.0).any()

    zipvl.disable(model)
    assert decoder.config._attn_implementation == text_before
    assert len(decoder._forward_pre_hooks) == hooks_before
    logits, tokens = _run(model, inputs)
    assert torch.equal(logits, dense_logits)
    assert torch.equal(tokens, dense_tokens)
    with pytest.raises(ValueError, match="not patched"):
        zipvl.stats(model)


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_5_vl"])
def test_enable_twice_is_idempotent_and_reconfigures(family):
    model, inputs, dense_logits, _ = _reference(family)
    decoder = model.get_decoder()
    hooks_before = len(decoder._forward_pre_hooks)
    sparse = zipvl.ZipVLConfig(tau=0.6, keep_last=4, num_recent_probes=8, num_random_probes=8)
    with _patched(model, sparse):
        with torch.no_grad():
            once = model(**inputs).logits
        assert zipvl.enable(model, sparse) is model
        assert len(decoder._forward_pre_hooks) == hooks_before + 1
        with torch.no_grad():
            twice = model(**inputs).logits
        assert torch.equal(once, twice)

        zipvl.enable(model, {"tau": 1.0})
        assert len(decoder._forward_pre_hooks) == hooks_before + 1
        with torch.no_grad():
            reconfigured = model(**inputs).logits
        assert (zipvl.stats(model).kept_ratio == 1.0).all()
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(reconfigured[valid], dense_logits[valid], rtol=1e-4, atol=1e-5)
    assert len(decoder._forward_pre_hooks) == hooks_before


def test_unsupported_model_names_the_supported_families():
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    with pytest.raises(ValueError) as error:
        zipvl.enable(model)
    message = str(error.value)
    assert "gpt2" in message
    for model_type in zipvl.SUPPORTED_MODEL_TYPES:
        assert model_type in message
    assert set(zipvl.SUPPORTED_MODEL_TYPES) == {
        "llama", "mistral", "qwen2", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl",
        "llava_next_video", "llava_onevision"}
