"""Seeds, configuration edges and bad input for the patched models.

Same seed, same output (ZIPVL.md invariant 5); a different seed draws other
probes. Bad input gets a clear error or a defined result: empty prompts, prompts
shorter than the probe window, all-padding rows, invalid configs, beam search,
sliding windows past their size, foreign caches.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

import zipvl
from zipvl.cache import ZipVLCache
from zipvl.testing import VISION_FAMILIES, build_inputs, build_tiny_model, make_test_image

WORDS = ("small boats drift past the harbour lights while gulls circle above the "
         "fishing nets and children laugh on the pier").split()


def _prompt(num_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def _inputs(family, processor, word_counts=(160, 120)):
    prompts = [_prompt(count, seed) for seed, count in enumerate(word_counts)]
    images = None
    if family in VISION_FAMILIES:
        images = [[make_test_image(41 + sample)] for sample in range(len(prompts))]
    return build_inputs(processor, family, prompts, images)


def _generate(model, inputs, new_tokens=4, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              return_dict_in_generate=True, **kwargs)


# ---- seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_same_seed_same_output_other_seed_other_selection(family):
    model, processor = build_tiny_model(family)
    inputs = _inputs(family, processor)
    runs = {}
    try:
        for run, seed in (("first", 0), ("again", 0), ("other_1", 1), ("other_2", 2)):
            zipvl.enable(model, zipvl.ZipVLConfig(tau=0.9, seed=seed))
            result = _generate(model, inputs)
            runs[run] = (result.sequences, zipvl.stats(model), zipvl.returned_cache(result))
    finally:
        zipvl.disable(model)

    sequences, stats, cache = runs["first"]
    again_sequences, again_stats, again_cache = runs["again"]
    assert torch.equal(sequences, again_sequences)
    assert (stats.kept_tokens == again_stats.kept_tokens).all()
    for layer, again_layer in zip(cache.layers, again_cache.layers):
        assert torch.equal(layer.keys, again_layer.keys)

    def same_selection(other_cache):
        return all(layer.keys.shape == other.keys.shape and torch.equal(layer.keys, other.keys)
                   for layer, other in zip(cache.layers, other_cache.layers))

    assert not (same_selection(runs["other_1"][2]) and same_selection(runs["other_2"][2])), \
        "the probe seed never changed which tokens were kept"


# ---- prompt edges ---------------------------------------------------------------------------


def test_empty_prompt_raises_clear_error():
    model, _ = build_tiny_model("llama")
    empty = torch.empty(1, 0, dtype=torch.long)
    zipvl.enable(model)
    try:
        with pytest.raises(ValueError, match="empty prompt"):
            model(input_ids=empty)
        with pytest.raises(ValueError, match="empty prompt"):
            model.generate(input_ids=empty, max_new_tokens=2)
    finally:
        zipvl.disable(model)


@pytest.mark.parametrize("family", ["llama", "llava"])
def test_prompt_shorter_than_probe_window_keeps_everything(family):
    model, processor = build_tiny_model(family)
    inputs = _inputs(family, processor, word_counts=(6, 3))
    dense = _generate(model, inputs).sequences
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.5, prefill="kv_local"))
    try:
        sparse = _generate(model, inputs).sequences
        stats = zipvl.stats(model)
    finally:
        zipvl.disable(model)
    assert (stats.prompt_tokens < 64).all(), "prompts must fit inside keep_last"
    assert (stats.kept_ratio == 1.0).all()
    assert torch.equal(sparse, dense)


def test_short_prompt_with_small_windows_is_selected_exactly():
    model, processor = build_tiny_model("qwen2")
    inputs = _inputs("qwen2", processor, word_counts=(8,))
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.5, keep_last=1, num_recent_probes=2,
                                          num_random_probes=2, prefill="qkv"))
    try:
        logits = _generate(model, inputs, output_logits=True).logits
        stats = zipvl.stats(model)
    finally:
        zipvl.disable(model)
    assert (stats.kept_tokens >= 1).all() and (stats.kept_ratio < 1.0).any()
    assert all(torch.isfinite(step).all() for step in logits)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_all_padding_row_keeps_nothing_and_spoils_nothing(family):
    model, processor = build_tiny_model(family)
    inputs = _inputs(family, processor, word_counts=(150, 20))
    inputs["attention_mask"][1] = 0
    single = _inputs(family, processor, word_counts=(150,))
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.9, prefill="kv_local"))
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
        stats = zipvl.stats(model)
        batch = _generate(model, inputs, output_logits=True)
        alone = _generate(model, single)
    finally:
        zipvl.disable(model)
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(step).all() for step in batch.logits)
    assert stats.prompt_tokens[1] == 0
    assert (stats.kept_tokens[:, 1] == 0).all() and (stats.kept_ratio[:, 1] == 1.0).all()
    new_tokens = batch.sequences[0, inputs["input_ids"].shape[1]:]
    assert torch.equal(new_tokens, alone.sequences[0, single["input_ids"].shape[1]:])


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("tau", 0.0), ("tau", 1.5), ("num_recent_probes", -1), ("keep_last", 2.5),
    ("selection", "random"), ("prefill", "sparse"), ("local_window", 0),
    ("dense_layers", (-1,)), ("min_prefill_len", -3), ("recompress_every", -1),
    ("strategy", {"name": "fixed_ratio", "ratio": 0.0}), ("strategy", "window"), ("score_pooling", 2), ("backend", "triton"), ("seed", -1),
    ("ranking", "window"),
])
def test_invalid_config_value_names_the_field(field, value):
    model, _ = build_tiny_model("llama")
    with pytest.raises(ValueError, match=field):
        zipvl.enable(model, {field: value})
    assert not hasattr(model, "_zipvl_patch")


def test_config_errors_at_the_edge():
    model, _ = build_tiny_model("llama")
    with pytest.raises(ValueError, match="unknown ZipVL config field"):
        zipvl.enable(model, {"ratio": 0.5})
    with pytest.raises(TypeError, match="ZipVLConfig"):
        zipvl.enable(model, 0.5)
    with pytest.raises(ValueError, match="flash"):
        zipvl.enable(model, zipvl.ZipVLConfig(backend="flash"))


def test_dense_layers_and_min_prefill_len():
    model, processor = build_tiny_model("mistral")
    inputs = _inputs("mistral", processor)
    dense = _generate(model, inputs).sequences
    try:
        zipvl.enable(model, zipvl.ZipVLConfig(tau=0.8, dense_layers=(0,)))
        _generate(model, inputs)
        stats = zipvl.stats(model)
        assert (stats.kept_ratio[0] == 1.0).all() and (stats.kept_ratio[1] < 1.0).all()

        zipvl.enable(model, zipvl.ZipVLConfig(tau=0.8, min_prefill_len=10_000))
        assert torch.equal(_generate(model, inputs).sequences, dense)
        assert (zipvl.stats(model).kept_ratio == 1.0).all()
    finally:
        zipvl.disable(model)


# ---- what ZipVL refuses ---------------------------------------------------------------------


def test_beam_search_is_refused():
    model, processor = build_tiny_model("llama")
    inputs = _inputs("llama", processor, word_counts=(20,))
    zipvl.enable(model)
    try:
        with pytest.raises(NotImplementedError, match="beam search"):
            _generate(model, inputs, num_beams=2)
    finally:
        zipvl.disable(model)


def test_sliding_window_past_its_size_is_refused():
    model, processor = build_tiny_model("mistral")
    model.config.sliding_window = 16
    inputs = _inputs("mistral", processor, word_counts=(40,))
    zipvl.enable(model)
    try:
        with pytest.raises(NotImplementedError, match="sliding-window"), torch.no_grad():
            model(**inputs)
    finally:
        zipvl.disable(model)


def test_foreign_cache_with_content_is_refused():
    model, processor = build_tiny_model("llama")
    inputs = _inputs("llama", processor, word_counts=(20,))
    with torch.no_grad():
        dense_cache = zipvl.returned_cache(model(**inputs, past_key_values=DynamicCache()))
    zipvl.enable(model)
    try:
        with pytest.raises(ValueError, match="ZipVLCache"), torch.no_grad():
            model(input_ids=inputs["input_ids"][:, -1:], past_key_values=dense_cache)
    finally:
        zipvl.disable(model)


def test_zipvl_attention_without_enable_is_refused():
    model, processor = build_tiny_model("llama")
    inputs = _inputs("llama", processor, word_counts=(10,))
    model.set_attn_implementation("zipvl")
    with pytest.raises(RuntimeError, match="zipvl.enable"), torch.no_grad():
        model(**inputs)


# ---- re-compression while decoding ----------------------------------------------------------


def test_recompression_with_tau_one_keeps_every_token():
    model, processor = build_tiny_model("llama")
    inputs = _inputs("llama", processor)
    dense = _generate(model, inputs, new_tokens=7).sequences
    zipvl.enable(model, zipvl.ZipVLConfig(tau=1.0, recompress_every=2))
    try:
        result = _generate(model, inputs, new_tokens=7)
    finally:
        zipvl.disable(model)
    assert torch.equal(result.sequences, dense)
    expected = inputs["attention_mask"].sum(-1) + 6
    for layer in zipvl.returned_cache(result).layers:
        assert torch.equal(layer.lengths, expected)


def test_recompression_shrinks_the_cache_while_decoding():
    model, processor = build_tiny_model("qwen2_vl")
    inputs = _inputs("qwen2_vl", processor)
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.8, keep_last=8, recompress_every=3))
    try:
        result = _generate(model, inputs, new_tokens=7, output_logits=True)
        stats = zipvl.stats(model)
    finally:
        zipvl.disable(model)
    cache = zipvl.returned_cache(result)
    assert isinstance(cache, ZipVLCache)
    without_recompression = torch.as_tensor(stats.kept_tokens) + 6
    assert (cache.kept_tokens() <= without_recompression).all()
    assert (cache.kept_tokens() < without_recompression).any()
    assert cache.get_seq_length() == inputs["input_ids"].shape[1] + 6
    assert all(torch.isfinite(step).all() for step in result.logits)
