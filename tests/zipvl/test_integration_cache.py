"""The compressed cache: its contents and bytes, how generate drives it, and decoding positions.

ZIPVL.md invariant 4: after prefill the cache holds ``p`` tokens per layer and
sample (measured from the cache tensors), and decoding continues at the
positions of the uncompressed sequence (RoPE, and Qwen2-VL M-RoPE with
``rope_deltas``).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

import zipvl
from zipvl.cache import ZipVLCache, ZipVLLayer
from zipvl.testing import (
    SUPPORTED_FAMILIES,
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    make_test_image,
)

WORDS = ("rivers carry small stones down from the mountains to the sea where waves "
         "break them into sand over many long years").split()
CONFIG = zipvl.ZipVLConfig(tau=0.85, prefill="kv_local")
NEW_TOKENS = 4


def batch_of_prompts(family, processor, word_counts=(160, 140)):
    """A left-padded batch of word-salad prompts (one image each for vision families)."""
    rng = random.Random(3)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in word_counts]
    images = None
    if family in VISION_FAMILIES:
        images = [[make_test_image(31 + sample)] for sample in range(len(prompts))]
    return build_inputs(processor, family, prompts, images)


# ---- the layer on its own -------------------------------------------------------------------


def _states(batch, heads, tokens, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, tokens, dim, generator=generator),
            torch.randn(batch, heads, tokens, dim, generator=generator))


def test_layer_prefill_compress_append():
    layer = ZipVLLayer()
    keys, values = _states(2, 3, 10, 4, seed=0)
    returned_keys, returned_values = layer.update(keys, values)
    assert returned_keys is keys and returned_values is values
    assert layer.awaiting_compression and layer.get_seq_length() == 10

    kept = [torch.tensor([[0, 4, 9], [1, 2, 9], [3, 5, 9]]), torch.tensor([[7], [8], [9]])]
    layer.compress(kept, prompt_tokens=[10, 6])
    assert layer.lengths.tolist() == [3, 1]
    for sample, sample_kept in enumerate(kept):
        for head in range(3):
            count = sample_kept.shape[1]
            assert torch.equal(layer.keys[sample, head, :count], keys[sample, head, sample_kept[head]])
            assert torch.equal(layer.values[sample, head, :count],
                               values[sample, head, sample_kept[head]])
            assert (layer.keys[sample, head, count:] == 0).all()
    assert layer.get_seq_length() == 10, "the logical length survives compression"
    assert layer.get_mask_sizes(1) == (11, 0)
    assert layer.kept_bytes() == 4 * 2 * 3 * 4 * keys.element_size()
    assert layer.dense_tokens() == 16

    new_keys, new_values = _states(2, 3, 1, 4, seed=1)
    held_keys, _ = layer.update(new_keys, new_values)
    assert layer.lengths.tolist() == [4, 2]
    assert layer.get_seq_length() == 11
    assert held_keys.shape[2] == 4
    assert torch.equal(layer.keys[0, :, 3], new_keys[0, :, 0])
    assert torch.equal(layer.keys[1, :, 1], new_keys[1, :, 0])
    assert layer.dense_tokens() == 18


def test_layer_grows_geometrically():
    layer = ZipVLLayer()
    keys, values = _states(1, 2, 8, 4, seed=0)
    layer.update(keys, values)
    layer.compress([torch.arange(8).expand(2, 8)], prompt_tokens=[8])
    capacities = set()
    for step in range(200):
        layer.update(*_states(1, 2, 1, 4, seed=step + 1))
        capacities.add(layer.keys.shape[2])
    assert layer.lengths.tolist() == [208]
    assert len(capacities) <= 8, f"storage reallocated {len(capacities)} times in 200 steps"
    assert layer.allocated_bytes() >= layer.kept_bytes()


def test_layer_rejects_what_it_cannot_do():
    layer = ZipVLLayer()
    layer.update(*_states(2, 1, 4, 2, seed=0))
    with pytest.raises(RuntimeError, match="never compressed"):
        layer.update(*_states(2, 1, 1, 2, seed=1))
    layer.compress([torch.tensor([[1, 3]]), torch.tensor([[2]])], prompt_tokens=[4, 4])
    layer.crop(0)
    with pytest.raises(NotImplementedError):
        layer.crop(-1)
    with pytest.raises(NotImplementedError, match="beam search"):
        layer.reorder_cache(torch.tensor([1, 0]))
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.lengths.tolist() == [1]


# ---- the cache under a patched model --------------------------------------------------------


def _measured_kept_bytes(cache: ZipVLCache) -> int:
    """Bytes of the valid slots, read off the cache tensors and their lengths."""
    total = 0
    for layer in cache.layers:
        batch, num_kv_heads, _, head_dim = layer.keys.shape
        for sample in range(batch):
            length = int(layer.lengths[sample])
            total += (layer.keys[sample, :, :length].numel() * layer.keys.element_size()
                      + layer.values[sample, :, :length].numel() * layer.values.element_size())
            assert layer.keys[sample, :, :length].shape == (num_kv_heads, length, head_dim)
    return total


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_cache_holds_kept_tokens_and_their_bytes(family):
    model, processor = build_tiny_model(family)
    inputs = batch_of_prompts(family, processor)
    zipvl.enable(model, CONFIG)
    try:
        with torch.no_grad():
            output = model(**inputs)
        cache = zipvl.returned_cache(output)
        stats = zipvl.stats(model)
        assert isinstance(cache, ZipVLCache)
        assert torch.equal(cache.kept_tokens(), torch.as_tensor(stats.kept_tokens))
        assert stats.cache_bytes == cache.kept_bytes() == _measured_kept_bytes(cache)
        assert stats.dense_cache_bytes == cache.dense_bytes()
        assert stats.cache_bytes < stats.dense_cache_bytes
        assert (stats.kept_tokens < stats.prompt_tokens[None, :]).any()
        assert cache.get_seq_length() == inputs["input_ids"].shape[1]

        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
        cache = zipvl.returned_cache(generated)
        stats = zipvl.stats(model)
        # generate forwards every new token but the last one.
        decoded = NEW_TOKENS - 1
        assert isinstance(cache, ZipVLCache)
        assert torch.equal(cache.kept_tokens(), torch.as_tensor(stats.kept_tokens) + decoded)
        assert cache.kept_bytes() == _measured_kept_bytes(cache)
        assert cache.get_seq_length() == inputs["input_ids"].shape[1] + decoded
    finally:
        zipvl.disable(model)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_user_cache_and_generate_cache_give_the_same_tokens(family):
    model, processor = build_tiny_model(family)
    inputs = batch_of_prompts(family, processor)
    zipvl.enable(model, CONFIG)
    try:
        with torch.no_grad():
            implicit = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
            user_cache = ZipVLCache()
            explicit = model.generate(**inputs, past_key_values=user_cache,
                                      max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
            swapped = zipvl.returned_cache(model(**inputs, past_key_values=DynamicCache()))
    finally:
        zipvl.disable(model)
    assert torch.equal(implicit, explicit)
    assert user_cache.get_seq_length() == inputs["input_ids"].shape[1] + NEW_TOKENS - 1
    assert user_cache.kept_bytes() > 0
    assert isinstance(swapped, ZipVLCache)


# ---- positions ------------------------------------------------------------------------------


def _first_decode_positions(model, inputs):
    """position_ids the language model receives at the first decoding step of generate."""
    decoder = model.get_decoder()
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs.get("position_ids"))

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    finally:
        handle.remove()
    return seen[1].clone()


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_generate_decodes_at_uncompressed_positions(family):
    model, processor = build_tiny_model(family)
    inputs = batch_of_prompts(family, processor)
    dense_positions = _first_decode_positions(model, inputs)
    zipvl.enable(model, CONFIG)
    try:
        sparse_positions = _first_decode_positions(model, inputs)
        assert (zipvl.stats(model).kept_tokens < zipvl.stats(model).prompt_tokens).any()
    finally:
        zipvl.disable(model)
    assert torch.equal(sparse_positions, dense_positions)
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        # Text positions count real tokens: the first new token sits at n_i.
        assert sparse_positions[:, -1].tolist() == inputs["attention_mask"].sum(-1).tolist()


def _manual_decode_step(model, inputs):
    """Prefill, then one step with neither position_ids nor a mask: positions come from
    the cache's length. Returns the rotary position ids of that step and its logits."""
    rotary = model.get_decoder().rotary_emb
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"] if "position_ids" in kwargs else args[1])

    handle = rotary.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            prefill = model(**inputs, use_cache=True)
            next_token = prefill.logits[:, -1:].argmax(-1)
            step = model(input_ids=next_token, past_key_values=zipvl.returned_cache(prefill),
                         use_cache=True)
    finally:
        handle.remove()
    return seen[-1], step.logits


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "llava", "qwen2_vl", "qwen2_5_vl"])
def test_manual_decoding_continues_from_the_logical_length(family):
    model, processor = build_tiny_model(family)
    inputs = batch_of_prompts(family, processor, word_counts=(160,))
    dense_positions, dense_logits = _manual_decode_step(model, inputs)
    zipvl.enable(model, CONFIG)
    try:
        sparse_positions, _ = _manual_decode_step(model, inputs)
        assert (zipvl.stats(model).kept_tokens < zipvl.stats(model).prompt_tokens).any()
        zipvl.enable(model, zipvl.ZipVLConfig(tau=1.0))
        exact_positions, exact_logits = _manual_decode_step(model, inputs)
    finally:
        zipvl.disable(model)
    assert torch.equal(sparse_positions, dense_positions)
    assert torch.equal(exact_positions, dense_positions)
    torch.testing.assert_close(exact_logits, dense_logits, rtol=1e-4, atol=1e-5)
