"""Sparse prefill and ragged decode attention against float64 naive masked attention."""

from __future__ import annotations

import pytest
import torch

from zipvl import kept_query_attention, partial_attention, sparse_attention
from zipvl.sparse_attention import (
    decode_attention,
    dense_causal_attention,
    sparse_prefill_attention,
)

MODES = ["qkv", "kv", "kv_local", "kept_dense", "kept_dense_local", "dense"]


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
    elif mode in ("kv", "kv_local"):
        window = 1 if mode == "kv" else local_window
        band = causal & (query_position - key_position < window)
        allowed = band | (in_kept[None, :] & (key_position <= query_position - window))
    else:
        # Query-side modes: a kept row reads every key before it, a dropped row the band
        # (and, for kept_dense, the kept keys before the band).
        band = causal & (query_position - key_position < local_window)
        dropped_row = band if mode == "kept_dense_local" else (
            band | (in_kept[None, :] & (key_position <= query_position - local_window)))
        allowed = torch.where(in_kept[:, None], causal, dropped_row)
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
@pytest.mark.parametrize("mode", ["qkv", "kv", "kv_local", "kept_dense", "kept_dense_local"])
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


@pytest.mark.parametrize("mode", ["kept_dense", "kept_dense_local"])
@pytest.mark.parametrize("seed", range(4))
def test_query_side_modes_without_the_cpu_op_match_the_split_kernel(monkeypatch, mode, seed):
    """The masked path (non-CPU devices) and the log-sum-exp split path agree with float64."""
    generator = torch.Generator().manual_seed(100 + seed)
    num_tokens = int(torch.randint(2, 700, (1,), generator=generator))
    budget = int(torch.randint(1, num_tokens + 1, (1,), generator=generator))
    local_window = int(torch.randint(1, 200, (1,), generator=generator))
    query, key, value = random_qkv(9, 3, num_tokens, seed=seed, dtype=torch.float32)
    kept = random_kept(3, num_tokens, budget, min(budget, 8), seed=seed)
    expected = naive_prefill(query, key, value, kept, mode, local_window, 0.3)
    split = sparse_prefill_attention(query, key, value, kept, mode, local_window, 0.3)
    monkeypatch.setattr(kept_query_attention, "has_flash_with_lse", lambda tensor: False)
    masked = sparse_prefill_attention(query, key, value, kept, mode, local_window, 0.3)
    torch.testing.assert_close(split.double(), expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(masked.double(), expected, atol=2e-6, rtol=1e-5)


def test_unknown_mode_is_refused():
    query, key, value = random_qkv(2, 1, 4)
    with pytest.raises(ValueError):
        sparse_prefill_attention(query, key, value, torch.arange(4)[None], "sometimes", 4, 1.0)


@HEADS
@pytest.mark.parametrize("num_new", [1, 3, 20])
# float64 with up to 16 new tokens takes the grouped CPU kernel; bfloat16, and 20 new
# tokens, SDPA (decode_attention picks by dtype and by the new tokens).
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_decode_attention_matches_batch_size_one(num_heads, num_kv_heads, num_new, dtype):
    # Ragged: two samples with cached tokens before the new ones, one with only new ones.
    lengths = torch.tensor([num_new + 4, num_new + 9, num_new])
    capacity = num_new + 12
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
    output = decode_attention(query.to(dtype), key.to(dtype), value.to(dtype), lengths,
                              scale=0.3).double()
    assert output.shape == query.shape
    # bfloat16 inputs: the reference is taken on the same rounded inputs.
    query, key, value = query.to(dtype).double(), key.to(dtype).double(), value.to(dtype).double()
    tolerance = {} if dtype == torch.float64 else {"atol": 2e-2, "rtol": 2e-2}
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
            torch.testing.assert_close(output[sample, head], probs @ valid_values, **tolerance)


# ---- the split CPU path of kv / kv_local against the fused-mask path ---------------------


def ragged_kept(num_kv_heads: int, num_tokens: int, budget: int, seed: int = 0) -> torch.Tensor:
    """Kept rows whose kept-prefix lengths differ widely between KV heads.

    Head 0 keeps the first ``budget`` tokens (long prefixes early), head 1 the last
    ``budget`` (empty prefixes until late), the others random positions.
    """
    budget = min(budget, num_tokens)
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.arange(budget), torch.arange(num_tokens - budget, num_tokens)]
    while len(rows) < num_kv_heads:
        rows.append(torch.sort(torch.randperm(num_tokens, generator=generator)[:budget]).values)
    return torch.stack(rows[:num_kv_heads])


def kv_naive(query, key, value, kept, local_window, scale):
    mode = "kv" if local_window == 1 else "kv_local"
    return naive_prefill(query, key, value, kept, mode, local_window, scale)


SPLIT_CASES = pytest.mark.parametrize("num_tokens,budget,local_window,query_chunk", [
    (150, 60, 8, 16),      # many chunks, n not a multiple of the chunk
    (150, 60, 1, 16),      # kv mode: the band is the query itself
    (300, 120, 128, 128),  # the default chunk, band crossing chunk borders
    (70, 30, 100, 32),     # n smaller than w: no kept prefix ever
    (61, 61, 5, 16),       # every token kept
    (61, 0, 5, 16),        # no token kept: the causal band alone
    (1, 1, 4, 16),
])


@SPLIT_CASES
@pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (9, 3), (3, 3)])
def test_split_path_matches_fused_mask_and_naive(num_tokens, budget, local_window, query_chunk,
                                                 num_heads, num_kv_heads):
    query, key, value = random_qkv(num_heads, num_kv_heads, num_tokens, seed=budget,
                                   dtype=torch.float32)
    kept = ragged_kept(num_kv_heads, num_tokens, budget, seed=num_tokens)
    scale = 0.4
    output = sparse_attention._kept_keys_with_band_attention_split(
        query, key, value, kept, local_window, scale, query_chunk=query_chunk)
    assert output.dtype == torch.float32 and output.shape == query.shape
    fused = sparse_attention._kept_keys_with_band_attention_fused_mask(query, key, value, kept,
                                                                       local_window, scale)
    torch.testing.assert_close(output, fused, atol=2e-6, rtol=1e-5)
    expected = kv_naive(query, key, value, kept, local_window, scale)
    torch.testing.assert_close(output.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("local_window,query_chunk", [(8, 16), (1, 32), (128, 128)])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (3, 3)])
def test_split_path_low_precision(local_window, query_chunk, num_heads, num_kv_heads):
    num_tokens = 200
    query, key, value = random_qkv(num_heads, num_kv_heads, num_tokens, seed=3,
                                   dtype=torch.bfloat16)
    kept = ragged_kept(num_kv_heads, num_tokens, 90, seed=4)
    output = sparse_attention._kept_keys_with_band_attention_split(
        query, key, value, kept, local_window, 0.35, query_chunk=query_chunk)
    assert output.dtype == torch.bfloat16
    expected = kv_naive(query, key, value, kept, local_window, 0.35)
    # bf16 keeps 8 bits of mantissa: the output and the two partial results are rounded.
    torch.testing.assert_close(output.double(), expected, atol=2e-2, rtol=2e-2)
    fused = sparse_attention._kept_keys_with_band_attention_fused_mask(query, key, value, kept,
                                                                       local_window, 0.35)
    torch.testing.assert_close(output.double(), fused.double(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("seed", range(6))
def test_split_path_on_random_shapes(seed):
    """Seeded random sizes, windows, chunks and kept sets (a property check without hypothesis)."""
    generator = torch.Generator().manual_seed(100 + seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    num_kv_heads, group = draw(1, 3), draw(1, 3)
    num_tokens = draw(1, 260)
    local_window, query_chunk = draw(1, 80), draw(1, 70)
    rows = []
    for _ in range(num_kv_heads):
        # Each head keeps a random prefix-heavy or suffix-heavy share of the tokens.
        weights = torch.linspace(1.0, 0.05, num_tokens).pow(draw(0, 3))
        if draw(0, 1):
            weights = weights.flip(0)
        rows.append(weights)
    budget = draw(0, num_tokens)
    kept = torch.stack([torch.sort(torch.multinomial(row, budget, generator=generator)).values
                        for row in rows]) if budget else torch.empty(num_kv_heads, 0,
                                                                      dtype=torch.long)
    query, key, value = random_qkv(num_kv_heads * group, num_kv_heads, num_tokens, seed=seed)
    output = sparse_attention._kept_keys_with_band_attention_split(
        query, key, value, kept, local_window, 0.3, query_chunk=query_chunk)
    expected = kv_naive(query, key, value, kept, local_window, 0.3)
    torch.testing.assert_close(output, expected, atol=1e-10, rtol=1e-10)


def test_split_path_reads_strided_inputs():
    """Query, key and value as the transformers layout gives them: ``[n, heads, d]`` transposed."""
    num_tokens, scale = 140, 0.3
    query, key, value = random_qkv(6, 2, num_tokens, seed=9, dtype=torch.float32)
    strided = [tensor.transpose(0, 1).contiguous().transpose(0, 1)
               for tensor in (query, key, value)]
    assert not strided[0].is_contiguous()
    kept = ragged_kept(2, num_tokens, 50)
    output = sparse_attention._kept_keys_with_band_attention_split(*strided, kept, 16, scale,
                                                                   query_chunk=32)
    torch.testing.assert_close(output.double(), kv_naive(query, key, value, kept, 16, scale),
                               atol=2e-6, rtol=1e-5)


def test_cpu_dispatch_takes_the_split_path(monkeypatch):
    calls = []
    split = sparse_attention._kept_keys_with_band_attention_split

    def spy(*args, **kwargs):
        calls.append(args[4])
        return split(*args, **kwargs)

    monkeypatch.setattr(sparse_attention, "_kept_keys_with_band_attention_split", spy)
    query, key, value = random_qkv(4, 2, 40, dtype=torch.float32)
    kept = random_kept(2, 40, 15, 4)
    sparse_prefill_attention(query, key, value, kept, "kv_local", 6, 0.3)
    sparse_prefill_attention(query, key, value, kept, "kv", 6, 0.3)
    assert calls == [6, 1]


def test_missing_private_op_falls_back_to_the_fused_mask_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the split path ran without its op")

    monkeypatch.setattr(partial_attention, "_FLASH_CPU_OP", "no_such_op_in_this_torch")
    monkeypatch.setattr(sparse_attention, "_kept_keys_with_band_attention_split", refuse)
    query, key, value = random_qkv(6, 2, 90, seed=5)
    kept = ragged_kept(2, 90, 40)
    output = sparse_prefill_attention(query, key, value, kept, "kv_local", 7, 0.3)
    torch.testing.assert_close(output, kv_naive(query, key, value, kept, 7, 0.3))
