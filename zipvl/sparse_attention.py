"""Attention over the kept tokens: sparse prefill (ZipVL step 6) and ragged decoding (step 8).

``qkv`` is ZipVL's sparse prefill (He et al., arXiv 2410.08584, Sec. 3.3):
attention among the kept tokens only, zero output elsewhere. ``kv`` and
``kv_local`` (every query reads the kept keys, plus a causal local band for
``kv_local``: the vertical-plus-slash pattern of MInference, Jiang et al., arXiv
2407.02490) are the alternatives ``shared/ZIPVL.md`` step 6 defines. All sparse
modes gather the kept keys and compute only on them: the dropped work is skipped,
never masked out of a dense ``n x n`` product.

Shapes: ``query [H, n, d]``, ``key, value [Hk, n, d]``, ``kept [Hk, p]`` sorted;
query head ``h`` reads KV head ``h // G`` with ``G = H / Hk`` (the transformers
``repeat_kv`` layout), and K/V are never repeated in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zipvl.kept_query_attention import KEPT_QUERY_MODES, kept_query_attention
from zipvl.partial_attention import (
    attention_with_lse,
    gather_tokens,
    has_flash_with_lse,
    merge_partial_attention,
)

# Queries per chunk in the fused-mask kv / kv_local path (non-CPU tensors, and the
# reference the split CPU path is tested against), at least the local window: memory
# is O(chunk * (p + chunk + window)) per head.
_MIN_QUERY_CHUNK = 256
# Queries per chunk in the split CPU path (``_kept_keys_with_band_attention_split``),
# tuned with ``benchmarks/bench_kernels.py``: smaller chunks shrink the masked part,
# larger ones give the kernel larger tiles; 128 (x G folded heads) was fastest or tied.
_SPLIT_QUERY_CHUNK = 128
# New tokens per call up to which CPU decoding takes the grouped kernel: it forms the
# scores [b, Hk, G x new, capacity] whole, which a long appended chunk (a continuation
# scored through the cache) would make large; SDPA streams them.
_GROUPED_MAX_NEW_TOKENS = 16


def dense_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """Dense causal attention ``[H, n, d]`` (grouped-query aware)."""
    output = F.scaled_dot_product_attention(query[None], key[None], value[None], is_causal=True,
                                            scale=scale, enable_gqa=True)
    return output[0]


def _kept_tokens_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           kept: torch.Tensor, scale: float) -> torch.Tensor:
    """The paper's mode: causal attention on the compacted kept sequence, zero rows elsewhere.

    Causality on the compacted sequence equals causality by position because
    ``kept`` is sorted, and RoPE was applied before gathering.
    """
    num_heads, num_tokens, head_dim = query.shape
    num_kv_heads, num_kept = kept.shape
    group = num_heads // num_kv_heads
    query_index = kept[:, None, :, None].expand(num_kv_heads, group, num_kept, head_dim)
    grouped_query = query.view(num_kv_heads, group, num_tokens, head_dim)
    kept_query = grouped_query.gather(2, query_index).reshape(num_heads, num_kept, head_dim)
    kept_output = F.scaled_dot_product_attention(
        kept_query[None], gather_tokens(key, kept)[None], gather_tokens(value, kept)[None],
        is_causal=True, scale=scale, enable_gqa=True)[0]
    output = torch.zeros_like(grouped_query)
    output.scatter_(2, query_index,
                    kept_output.view(num_kv_heads, group, num_kept, head_dim).to(query.dtype))
    return output.view(num_heads, num_tokens, head_dim)


def _kept_keys_with_band_attention_fused_mask(query: torch.Tensor, key: torch.Tensor,
                                              value: torch.Tensor, kept: torch.Tensor,
                                              local_window: int, scale: float) -> torch.Tensor:
    """``_kept_keys_with_band_attention`` as one masked SDPA call per query chunk.

    The path for non-CPU tensors (no log-sum-exp from SDPA there) and the reference
    the split CPU path is tested and benchmarked against. Chunked over queries:
    per chunk, one fused SDPA call over the concatenated key sets with a boolean
    mask (measured 2-3x faster on CPU than an explicit matmul + softmax).
    """
    num_heads, num_tokens, head_dim = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    device = query.device
    kept_keys = gather_tokens(key, kept)
    kept_values = gather_tokens(value, kept)
    token_positions = torch.arange(num_tokens, device=device)
    output = torch.empty_like(query)
    chunk = max(local_window, _MIN_QUERY_CHUNK)
    starts = list(range(0, num_tokens, chunk))
    # kept is sorted, so the keys a chunk may read through the vertical part are a prefix of
    # each row: later kept keys are skipped, not masked. The prefix lengths of every chunk
    # (the longest over KV heads) are shapes: read back in one transfer, not one per chunk.
    last_vertical = (torch.arange(chunk, num_tokens + chunk, chunk, dtype=kept.dtype, device=device)
                     .clamp_max(num_tokens) - 1 - local_window)
    visible_per_chunk = torch.searchsorted(
        kept.contiguous(), last_vertical.expand(num_kv_heads, -1).contiguous(),
        right=True).amax(dim=0).tolist() if starts else []
    for start, num_visible in zip(starts, visible_per_chunk):
        end = min(start + chunk, num_tokens)
        num_queries = end - start
        query_positions = token_positions[start:end]
        vertical_allowed = (kept[:, None, :num_visible]
                            <= (query_positions - local_window)[None, :, None])
        band_start = max(0, start - local_window + 1)
        offset = query_positions[:, None] - token_positions[None, band_start:end]
        band_allowed = ((offset >= 0) & (offset < local_window))[None].expand(num_kv_heads, -1, -1)
        allowed = torch.cat([vertical_allowed, band_allowed], dim=-1)
        allowed = allowed[:, None].expand(num_kv_heads, group, num_queries, allowed.shape[-1])

        chunk_keys = torch.cat([kept_keys[:, :num_visible], key[:, band_start:end]], dim=1)
        chunk_values = torch.cat([kept_values[:, :num_visible], value[:, band_start:end]], dim=1)
        output[:, start:end] = F.scaled_dot_product_attention(
            query[None, :, start:end], chunk_keys[None], chunk_values[None],
            attn_mask=allowed.reshape(1, num_heads, num_queries, -1), scale=scale,
            enable_gqa=True)[0]
    return output


def _band_pattern(num_queries: int, first_query_offset: int, num_keys: int, local_window: int,
                  dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept-independent part of a chunk's mask, ``(late [q, L], band [q, L])``.

    Query ``i`` of the chunk sits ``i + first_query_offset`` tokens after key ``0`` of
    the slice. ``late``: the key is at or before ``i - w`` (allowed iff kept).
    ``band``: additive ``0`` on the causal band ``(i - w, i]``, ``-inf`` elsewhere.
    """
    offset = (torch.arange(num_queries, device=device)[:, None] + first_query_offset
              - torch.arange(num_keys, device=device)[None, :])
    late = offset >= local_window
    band = torch.zeros(offset.shape, dtype=dtype, device=device)
    band.masked_fill_((offset < 0) | late, float("-inf"))
    return late, band


def _kept_keys_with_band_attention_split(query: torch.Tensor, key: torch.Tensor,
                                         value: torch.Tensor, kept: torch.Tensor,
                                         local_window: int, scale: float,
                                         query_chunk: int = _SPLIT_QUERY_CHUNK) -> torch.Tensor:
    """CPU path of ``_kept_keys_with_band_attention``: unmasked kept prefix + masked rest.

    The fused-mask path pays for its mask, not for its FLOPs: SDPA turns the boolean
    ``[H, q, keys]`` mask into a float tensor on every call, and the kept prefix is
    copied next to the band; the CPU kernel's own mask pass costs only ~7% (measured,
    torch 2.13, 1 thread, 9 heads x 256 queries x 2400 keys: SDPA 46 ms with a boolean
    mask, 28 ms with a float one; the op 26 ms with a float mask, 25 ms without). So
    for queries ``[s, e)`` the keys are split in two disjoint sets:

    * A: kept keys ``j <= s - w``, readable by every query of the chunk: a prefix of
      the gathered kept keys per KV head (``kept`` is sorted), read without a mask.
      Prefix lengths differ between KV heads, so A runs once per KV head (its ``G``
      query heads in one call); a head with an empty prefix skips it.
    * B: the contiguous key slice ``(s - w, e)``, which holds the band ``(i - w, i]``
      and every kept key in ``(s - w, i - w]``; masked, never empty (it holds ``i``).

    The two results are merged exactly with their log-sum-exps; the prefix is a view of
    the keys gathered once, the only mask is ``[Hk, q, q + w - 1]``.
    """
    num_heads, num_tokens, head_dim = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    device = query.device
    grouped_query = query.view(num_kv_heads, group, num_tokens, head_dim)
    output = torch.empty_like(grouped_query)
    kept_keys = gather_tokens(key, kept)
    kept_values = gather_tokens(value, kept)
    # Additive 0 / -inf per (KV head, position): whether the key is kept.
    kept_additive = torch.full((num_kv_heads, num_tokens), float("-inf"), dtype=query.dtype,
                               device=device)
    kept_additive.scatter_(1, kept, 0.0)
    starts = list(range(0, num_tokens, query_chunk))
    # Per chunk and KV head, how many kept keys are <= s - w: the length of part A. A CPU-only
    # path (``has_flash_with_lse``), so ``tolist`` reads host memory and waits for nothing.
    boundaries = (torch.arange(0, num_tokens, query_chunk, dtype=kept.dtype, device=device)
                  - local_window).expand(num_kv_heads, -1)
    prefix_lengths = torch.searchsorted(kept.contiguous(), boundaries.contiguous(),
                                        right=True).T.tolist() if starts else []
    patterns: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for start, prefix_length in zip(starts, prefix_lengths):
        end = min(start + query_chunk, num_tokens)
        num_queries = end - start
        slice_start = max(0, start - local_window + 1)
        num_keys = end - slice_start
        chunk_query = grouped_query[:, :, start:end]

        pattern_key = (num_queries, start - slice_start)
        if pattern_key not in patterns:
            # Only the first chunks (slice clipped at 0) and the last one differ: build once.
            patterns[pattern_key] = _band_pattern(num_queries, start - slice_start, num_keys,
                                                  local_window, query.dtype, device)
        late, band = patterns[pattern_key]
        mask = torch.where(late, kept_additive[:, None, slice_start:end], band)
        shape = (num_kv_heads, group, num_keys, head_dim)
        output_b, lse_b = attention_with_lse(
            chunk_query, key[:, None, slice_start:end].expand(shape),
            value[:, None, slice_start:end].expand(shape),
            mask[:, None].expand(num_kv_heads, group, num_queries, num_keys), scale)

        for kv_head, length in enumerate(prefix_length):
            if length == 0:
                output[kv_head, :, start:end] = output_b[kv_head]
                continue
            # The G query heads of the KV head fold into the query axis (they read the same
            # keys, unmasked): one call with G * q rows, which the CPU kernel tiles in
            # larger query blocks than q rows per head (measured ~5% faster at q = 128).
            output_a, lse_a = attention_with_lse(
                chunk_query[kv_head].reshape(1, 1, group * num_queries, head_dim),
                kept_keys[None, None, kv_head, :length], kept_values[None, None, kv_head, :length],
                None, scale)
            output[kv_head, :, start:end] = merge_partial_attention(
                output_a.view(group, num_queries, head_dim), lse_a.view(group, num_queries),
                output_b[kv_head], lse_b[kv_head])
    return output.view(num_heads, num_tokens, head_dim)


def _kept_keys_with_band_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                   kept: torch.Tensor, local_window: int,
                                   scale: float) -> torch.Tensor:
    """Query ``i`` attends to kept keys ``j <= i - w`` plus the causal band ``(i - w, i]``.

    The two key sets are disjoint by construction, so no key is counted twice, and
    the band always holds ``i`` itself, so no row is empty. On CPU the kept prefix
    runs unmasked and is merged by log-sum-exp (``_kept_keys_with_band_attention_split``);
    elsewhere one fused masked SDPA call per query chunk
    (``_kept_keys_with_band_attention_fused_mask``).
    """
    if has_flash_with_lse(query):
        return _kept_keys_with_band_attention_split(query, key, value, kept, local_window, scale)
    return _kept_keys_with_band_attention_fused_mask(query, key, value, kept, local_window,
                                                     scale)


def sparse_prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             kept: torch.Tensor, mode: str, local_window: int,
                             scale: float) -> torch.Tensor:
    """Prefill attention ``[H, n, d]`` (query dtype) under ``mode``, given kept positions.

    ``qkv``: causal attention among the kept tokens, zero rows for the others.
    ``kv``: every query reads the kept keys before it and itself.
    ``kv_local``: every query reads the kept keys at or before ``i - local_window``
    plus the dense causal band of the last ``local_window`` keys. ``dense``: dense.
    ``kept_dense`` / ``kept_dense_local``: the query-side modes of
    ``kept_query_attention`` (kept queries read every key).
    """
    if mode == "dense":
        return dense_causal_attention(query, key, value, scale)
    if mode == "qkv":
        return _kept_tokens_attention(query, key, value, kept, scale)
    if mode == "kv":
        return _kept_keys_with_band_attention(query, key, value, kept, 1, scale)
    if mode in ("kv_local", *KEPT_QUERY_MODES) and local_window < 1:
        raise ValueError(f"local_window must be >= 1, got {local_window}")
    if mode == "kv_local":
        return _kept_keys_with_band_attention(query, key, value, kept, local_window, scale)
    if mode in KEPT_QUERY_MODES:
        return kept_query_attention(query, key, value, kept, mode, local_window, scale)
    raise ValueError(f"unknown prefill mode {mode!r}")


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of ``q`` new tokens over a ragged left-aligned cache: ``[b, H, q, d]``.

    Sample ``b`` holds ``lengths[b]`` valid tokens at ``[0, lengths[b])`` whose last
    ``q`` are the new tokens; slots past ``lengths[b]`` are padding. New token ``t``
    reads slots ``j <= lengths[b] - q + t`` (causal among the new tokens).
    """
    num_new = query.shape[2]
    capacity = key.shape[2]
    slots = torch.arange(capacity, device=query.device)
    last_visible = (lengths.to(query.device)[:, None] - num_new
                    + torch.arange(num_new, device=query.device)[None, :])
    allowed = slots[None, None, :] <= last_visible[:, :, None]
    if (query.device.type == "cpu" and query.dtype in (torch.float32, torch.float64)
            and num_new <= _GROUPED_MAX_NEW_TOKENS):
        return _grouped_decode_attention(query, key, value, allowed, scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None],
                                          scale=scale, enable_gqa=True)


def _grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """Decoding attention with the query heads of each KV head as the rows of one product.

    A decoding step is bound by reading the cache. SDPA's CPU kernel, given
    ``enable_gqa``, takes each (sample, query head) as its own problem of one query row;
    here the ``G`` heads that share a KV head (and the new tokens) are the rows of one
    matrix product over that KV head. On CPU in float32 this was 1.17x-1.24x faster
    than SDPA at 2K-8K tokens x 8 and 2K x 1 (``benchmarks/bench_decode_kernel.py``),
    but slower on a cache small enough to stay in the CPU's caches (512 x 2: 0.81x and
    0.85x in two quick runs, not saved); other
    devices (not measured) and low-precision dtypes (which SDPA accumulates in float32)
    keep SDPA.
    ``allowed [b, q, capacity]``.
    """
    batch, num_heads, num_new, head_dim = query.shape
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    rows = query.reshape(batch, num_kv_heads, group * num_new, head_dim)
    scores = torch.matmul(rows, key.transpose(-1, -2)).mul_(scale)
    scores.view(batch, num_kv_heads, group, num_new, -1).masked_fill_(
        ~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).view(batch, num_heads, num_new, head_dim)
