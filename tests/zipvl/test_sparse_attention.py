"""Sparse prefill and ragged decode attention against float64 naive masked attention."""

from __future__ import annotations

import pytest
import torch

from zipvl.sparse_attention import (
    decode_attention,
    dense_causal_attention,
    sparse_prefill_attention,
)

MODES = ["qkv", "kv", "kv_local", "dense"]


def random_qkv(num_heads: int, num_kv_heads: int, num_tokens: int, head_dim: int = 8,
               seed: int = 0, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_heads, num_tokens, head_dim, generator=generator, dtype=torch.float64)
    key = torch.randn(num_kv_heads, num_tokens, head_dim, generator=generator, dtype=torch.float64)
    value = torch.randn(num_kv_heads, num_tokens, head_dim, generator=generator,
                        dtype=torch.float64)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def random_kept(num_kv_heads: int, num_tokens: int, budget: int, keep_last: int,
                seed: int = 0) -> torch.Tensor:
    """Sorted kept positions per KV head, including the last ``keep_last``."""
    generator = torch.Generator().manual_seed(seed)
    num_last = min(keep_last, num_tokens)
    rows = []
    for _ in range(num_kv_heads):
        drawn = torch.randperm(num_tokens - num_last, generator=generator)[:budget - num_last]
        rows.append(torch.sort(torch.cat([drawn, torch.arange(num_tokens - num_last,
                                                              num_tokens)])).values)
    return torch.stack(rows)


def mode_mask(kept_row: torch.Tensor, num_tokens: int, mode: str, local_window: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The full ``[n, n]`` allowed-mask of a mode for one KV head, and the rows that produce output."""
    position = torch.arange(num_tokens)
    query_position, key_position = position[:, None], position[None, :]
    causal = key_position <= query_position
    in_kept = torch.zeros(num_tokens, dtype=torch.bool)
    in_kept[kept_row] = True
    rows = torch.ones(num_tokens, dtype=torch.bool)
    if mode == "dense":
        allowed = causal
    elif mode == "qkv":
        allowed = causal & in_kept[None, :] & in_kept[:, None]
        rows = in_kept
    else:
        window = 1 if mode == "kv" else local_window
        band = causal & (query_position - key_position < window)
        allowed = band | (in_kept[None, :] & (key_position <= query_position - window))
    return allowed, rows


def naive_prefill(query, key, value, kept, mode, local_window, scale):
    """Full ``n x n`` masked attention in float64, rows outside ``T`` zeroed for ``qkv``."""
    num_heads, num_tokens, _ = query.shape
    group = num_heads // key.shape[0]
    output = torch.zeros(query.shape, dtype=torch.float64)
    for head in range(num_heads):
        kv_head = head // group
        allowed, rows = mode_mask(kept[kv_head], num_tokens, mode, local_window)
        logits = query[head].double() @ key[kv_head].double().T * scale
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        # Rows outside T have no allowed key in qkv (softmax of nothing): their output is zero.
        output[head] = torch.where(rows[:, None], probs @ value[kv_head].double(), 0.0)
    return output


HEADS = pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (4, 4)])


@HEADS
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_tokens,budget,keep_last,local_window", [
    (37, 15, 4, 5),
    (600, 200, 16, 128),   # several query chunks, band crossing chunk borders
    (300, 40, 8, 3),
    (20, 20, 4, 64),       # window longer than the sequence
    (1, 1, 1, 128),
])
def test_sparse_prefill_matches_naive_masked_attention(num_heads, num_kv_heads, mode, num_tokens,
                                                       budget, keep_last, local_window):
    query, key, value = random_qkv(num_heads, num_kv_heads, num_tokens, seed=num_tokens)
    kept = random_kept(num_kv_heads, num_tokens, budget, keep_last, seed=budget)
    scale = 0.3
    output = sparse_prefill_attention(query, key, value, kept, mode, local_window, scale)
    assert output.dtype == query.dtype and output.shape == query.shape
    expected = naive_prefill(query, key, value, kept, mode, local_window, scale)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    float32_output = sparse_prefill_attention(query.float(), key.float(), value.float(), kept,
                                              mode, local_window, scale)
    assert float32_output.dtype == torch.float32
    torch.testing.assert_close(float32_output.double(), expected, atol=2e-5, rtol=1e-4)


@HEADS
@pytest.mark.parametrize("mode", ["qkv", "kv", "kv_local"])
def test_keeping_every_token_is_dense_attention(num_heads, num_kv_heads, mode):
    num_tokens = 90
    query, key, value = random_qkv(num_heads, num_kv_heads, num_tokens, seed=7)
    everything = torch.arange(num_tokens).expand(num_kv_heads, num_tokens)
    output = sparse_prefill_attention(query, key, value, everything, mode, 16, 0.2)
    torch.testing.assert_close(output, dense_causal_attention(query, key, value, 0.2))
    torch.testing.assert_close(output, naive_prefill(query, key, value, everything, "dense", 16,
                                                     0.2))


def test_low_precision_output_keeps_query_dtype():
    query, key, value = random_qkv(4, 2, 50, seed=1)
    kept = random_kept(2, 50, 20, 4)
    expected = naive_prefill(query.bfloat16(), key.bfloat16(), value.bfloat16(), kept, "kv_local",
                             8, 0.35)
    for mode in MODES:
        output = sparse_prefill_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), kept,
                                          mode, 8, 0.35)
        assert output.dtype == torch.bfloat16
    output = sparse_prefill_attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), kept,
                                      "kv_local", 8, 0.35)
    torch.testing.assert_close(output.double(), expected, atol=2e-2, rtol=2e-2)


def test_unknown_mode_is_refused():
    query, key, value = random_qkv(2, 1, 4)
    with pytest.raises(ValueError):
        sparse_prefill_attention(query, key, value, torch.arange(4)[None], "sometimes", 4, 1.0)


@HEADS
@pytest.mark.parametrize("num_new", [1, 3])
def test_decode_attention_matches_batch_size_one(num_heads, num_kv_heads, num_new):
    lengths = torch.tensor([7, 12, num_new])
    capacity = 15
    batch = lengths.numel()
    generator = torch.Generator().manual_seed(num_new)
    query = torch.randn(batch, num_heads, num_new, 8, generator=generator, dtype=torch.float64)
    key = torch.randn(batch, num_kv_heads, capacity, 8, generator=generator, dtype=torch.float64)
    value = torch.randn(batch, num_kv_heads, capacity, 8, generator=generator,
                        dtype=torch.float64)
    # Loud garbage in the padding slots: any leak through the mask shows.
    for sample, length in enumerate(lengths.tolist()):
        key[sample, :, length:] = 1e3
        value[sample, :, length:] = 1e6
    output = decode_attention(query, key, value, lengths, scale=0.3)
    assert output.shape == query.shape
    group = num_heads // num_kv_heads
    for sample, length in enumerate(lengths.tolist()):
        for head in range(num_heads):
            valid_keys = key[sample, head // group, :length]
            valid_values = value[sample, head // group, :length]
            logits = query[sample, head] @ valid_keys.T * 0.3
            # New token t sits at position length - num_new + t.
            new_positions = torch.arange(length - num_new, length)[:, None]
            allowed = torch.arange(length)[None, :] <= new_positions
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            torch.testing.assert_close(output[sample, head], probs @ valid_values)
