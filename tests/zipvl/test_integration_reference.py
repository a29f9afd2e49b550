"""A fixed selection through a whole patched attention layer equals a float64 naive reference.

The reference rebuilds the layer from its weights: projections, RoPE, the full
``n x n`` masked attention of each prefill mode with the rows outside ``T``
zeroed (``qkv``), then the output projection (ZIPVL.md invariant 2). The kept
tokens are forced by a selection strategy of the test's own (``ForcedSelection``); padding is part of the
batch, so the unpadded gathering is checked too, and so is the compressed cache.
"""

from __future__ import annotations

import random

import pytest
import torch

import zipvl
from zipvl.strategies import SelectionStrategy
from zipvl.testing import (
    SUPPORTED_FAMILIES,
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    make_test_image,
)

WORDS = "one two three four five six seven eight nine ten red green blue".split()
LOCAL_WINDOW = 5


def _inputs(family, processor):
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in (30, 12)]
    images = [[make_test_image(3)], [make_test_image(4)]] if family in VISION_FAMILIES else None
    return build_inputs(processor, family, prompts, images)


def forced_kept(layer_idx: int, sample: int, num_tokens: int, num_kv_heads: int) -> torch.Tensor:
    """Different sorted kept sets per (layer, sample, KV head), all of the same size."""
    generator = torch.Generator().manual_seed(1000 * layer_idx + sample)
    size = max(1, num_tokens // 2)
    rows = [torch.sort(torch.randperm(num_tokens, generator=generator)[:size]).values
            for _ in range(num_kv_heads)]
    return torch.stack(rows)


class ForcedSelection(SelectionStrategy):
    """A strategy that ignores the scores and keeps ``forced_kept``'s positions."""

    name = "forced"

    def kept_positions(self, query, key, *, config, layer_idx, sample, scale):
        return forced_kept(layer_idx, sample, key.shape[1], key.shape[0])


def _rotate_half(tensor):
    half = tensor.shape[-1] // 2
    return torch.cat((-tensor[..., half:], tensor[..., :half]), dim=-1)


def _linear(module, hidden):
    weight = module.weight.double()
    bias = module.bias.double() if module.bias is not None else None
    return torch.nn.functional.linear(hidden, weight, bias)


def _allowed(kept_row: torch.Tensor, num_tokens: int, mode: str) -> torch.Tensor:
    """``[n, n]`` bool: which keys query ``i`` reads, built naively from the definitions."""
    position = torch.arange(num_tokens)
    query_index, key_index = position[:, None], position[None, :]
    in_kept = torch.zeros(num_tokens, dtype=torch.bool)
    in_kept[kept_row] = True
    causal = key_index <= query_index
    if mode == "qkv":
        return causal & in_kept[None, :] & in_kept[:, None]
    if mode == "kv":
        return causal & (in_kept[None, :] | (key_index == query_index))
    band = (query_index - key_index >= 0) & (query_index - key_index < LOCAL_WINDOW)
    kept_before_band = in_kept[None, :] & (key_index <= query_index - LOCAL_WINDOW)
    if mode == "kv_local":
        return kept_before_band | band
    if mode == "kept_dense":
        return torch.where(in_kept[:, None], causal, kept_before_band | band)
    if mode == "kept_dense_local":
        return torch.where(in_kept[:, None], causal, band)
    raise AssertionError(mode)


def _project(attention, hidden, cos, sin):
    """float64 ``query [H, n, d]`` and rotated ``key, value [Hk, n, d]`` from layer inputs."""
    num_tokens, head_dim = hidden.shape[0], attention.head_dim
    query = _linear(attention.q_proj, hidden).view(num_tokens, -1, head_dim).transpose(0, 1)
    key = _linear(attention.k_proj, hidden).view(num_tokens, -1, head_dim).transpose(0, 1)
    value = _linear(attention.v_proj, hidden).view(num_tokens, -1, head_dim).transpose(0, 1)
    return query * cos + _rotate_half(query) * sin, key * cos + _rotate_half(key) * sin, value


def _attend(attention, query, key, value, allowed):
    """Naive masked attention of every head, zero rows where nothing is allowed, then o_proj."""
    num_heads, num_queries, head_dim = query.shape
    group = num_heads // key.shape[0]
    outputs = []
    for head in range(num_heads):
        kv_head = head // group
        head_allowed = allowed[kv_head]
        logits = (query[head] @ key[kv_head].T) * attention.scaling
        logits = logits.masked_fill(~head_allowed, float("-inf"))
        rows_with_keys = head_allowed.any(dim=-1)
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0) * rows_with_keys[:, None]
        outputs.append(probs @ value[kv_head])
    attended = torch.stack(outputs, dim=1).reshape(num_queries, num_heads * head_dim)
    return _linear(attention.o_proj, attended)


def _reference_prefill(attention, hidden, cos, sin, kept, mode):
    """float64 prefill output ``[n, hidden]`` of one unpadded sample, and its rotated K/V."""
    query, key, value = _project(attention, hidden, cos, sin)
    allowed = torch.stack([_allowed(row, hidden.shape[0], mode) for row in kept])
    return _attend(attention, query, key, value, allowed), key, value


def _reference_decode(attention, kept_keys, kept_values, hidden, cos, sin):
    """float64 output ``[t, hidden]`` of ``t`` decoded tokens over the kept K/V plus their own."""
    query, key, value = _project(attention, hidden, cos, sin)
    keys, values = torch.cat([kept_keys, key], dim=1), torch.cat([kept_values, value], dim=1)
    num_new, num_kept = hidden.shape[0], kept_keys.shape[1]
    # New token t reads every kept token and the new tokens up to itself.
    allowed = torch.ones(num_new, num_kept + num_new, dtype=torch.bool)
    allowed[:, num_kept:] = torch.ones(num_new, num_new).tril().bool()
    return _attend(attention, query, keys, values, allowed.expand(keys.shape[0], -1, -1))


@pytest.mark.parametrize("mode", ["qkv", "kv", "kv_local", "kept_dense", "kept_dense_local"])
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_forced_selection_matches_float64_reference(family, mode):
    """Prefill with forced kept tokens, then two decoding steps over the compressed cache."""
    model, processor = build_tiny_model(family)
    inputs = _inputs(family, processor)
    decoder = model.get_decoder()
    attention_layers = [layer.self_attn for layer in decoder.layers]
    captured = {index: [] for index in range(len(attention_layers))}

    def capture(layer_idx):
        def hook(module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            # Without position_ids the text models share one row of positions over the batch.
            batch = hidden.shape[0]
            captured[layer_idx].append((hidden.detach(), cos.expand(batch, -1, -1),
                                        sin.expand(batch, -1, -1), output[0].detach()))
        return hook

    handles = [attention.register_forward_hook(capture(index), with_kwargs=True)
               for index, attention in enumerate(attention_layers)]
    config = zipvl.ZipVLConfig(prefill=mode, local_window=LOCAL_WINDOW,
                               strategy=ForcedSelection())
    zipvl.enable(model, config)
    num_kv_heads = model.config.get_text_config().num_key_value_heads
    try:
        with torch.no_grad():
            output = model(**inputs, use_cache=True)
            cache = zipvl.returned_cache(output)
            stats = zipvl.stats(model)
            kept_lengths = [layer.lengths.clone() for layer in cache.layers]
            kept_keys = [layer.keys.clone() for layer in cache.layers]
            next_token = output.logits[:, -1:].argmax(-1)
            # No mask: the compressed cache holds no padding, and without one every family
            # (Qwen2-VL's M-RoPE included) derives the step's positions from the cache length.
            for _ in range(2):
                step = model(input_ids=next_token, past_key_values=cache, use_cache=True)
                next_token = step.logits[:, -1:].argmax(-1)
    finally:
        for handle in handles:
            handle.remove()
        zipvl.disable(model)

    mask = inputs["attention_mask"].bool()
    for layer_idx, attention in enumerate(attention_layers):
        (hidden, cos, sin, layer_output), *decode_steps = captured[layer_idx]
        assert len(decode_steps) == 2
        for sample in range(mask.shape[0]):
            positions = mask[sample].nonzero().squeeze(1)
            num_tokens = positions.numel()
            kept = forced_kept(layer_idx, sample, num_tokens, num_kv_heads)
            expected, rotated_keys, values = _reference_prefill(
                attention, hidden[sample, positions].double(), cos[sample, positions].double(),
                sin[sample, positions].double(), kept, mode)
            torch.testing.assert_close(layer_output[sample, positions].double(), expected,
                                       rtol=1e-4, atol=1e-5)
            # The cache held exactly the kept tokens' keys, left-aligned, per KV head.
            index = kept[:, :, None].expand(-1, -1, rotated_keys.shape[-1])
            expected_keys = rotated_keys.gather(1, index)
            assert int(kept_lengths[layer_idx][sample]) == kept.shape[1]
            torch.testing.assert_close(kept_keys[layer_idx][sample, :, : kept.shape[1]].double(),
                                       expected_keys, rtol=1e-4, atol=1e-5)
            assert stats.kept_tokens[layer_idx, sample] == kept.shape[1]
            assert stats.prompt_tokens[sample] == num_tokens

            # Decoding reads the kept tokens and the new ones, at ragged cache lengths.
            new_hidden = torch.cat([step[0][sample] for step in decode_steps]).double()
            new_cos = torch.cat([step[1][sample] for step in decode_steps]).double()
            new_sin = torch.cat([step[2][sample] for step in decode_steps]).double()
            expected_new = _reference_decode(attention, expected_keys, values.gather(1, index),
                                             new_hidden, new_cos, new_sin)
            actual_new = torch.cat([step[3][sample] for step in decode_steps]).double()
            torch.testing.assert_close(actual_new, expected_new, rtol=1e-4, atol=1e-5)
