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

# Queries per chunk in the kv / kv_local path, at least the local window: memory is
# O(chunk * (p + chunk + window)) per head.
_MIN_QUERY_CHUNK = 256


def dense_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """Dense causal attention ``[H, n, d]`` (grouped-query aware)."""
    output = F.scaled_dot_product_attention(query[None], key[None], value[None], is_causal=True,
                                            scale=scale, enable_gqa=True)
    return output[0]


def _gather_tokens(tensor: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``tensor [Hk, n, d]`` at ``kept [Hk, p]`` -> ``[Hk, p, d]``."""
    return tensor.gather(1, kept[:, :, None].expand(-1, -1, tensor.shape[-1]))


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
        kept_query[None], _gather_tokens(key, kept)[None], _gather_tokens(value, kept)[None],
        is_causal=True, scale=scale, enable_gqa=True)[0]
    output = torch.zeros_like(grouped_query)
    output.scatter_(2, query_index,
                    kept_output.view(num_kv_heads, group, num_kept, head_dim).to(query.dtype))
    return output.view(num_heads, num_tokens, head_dim)


def _kept_keys_with_band_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                   kept: torch.Tensor, local_window: int,
                                   scale: float) -> torch.Tensor:
    """Query ``i`` attends to kept keys ``j <= i - w`` plus the causal band ``(i - w, i]``.

    The two key sets are disjoint by construction, so no key is counted twice, and
    the band always holds ``i`` itself, so no row is empty. Chunked over queries:
    per chunk, one fused SDPA call over the concatenated key sets with a boolean
    mask (measured 2-3x faster on CPU than an explicit matmul + softmax).
    """
    num_heads, num_tokens, head_dim = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    device = query.device
    kept_keys = _gather_tokens(key, kept)
    kept_values = _gather_tokens(value, kept)
    token_positions = torch.arange(num_tokens, device=device)
    output = torch.empty_like(query)
    chunk = max(local_window, _MIN_QUERY_CHUNK)
    for start in range(0, num_tokens, chunk):
        end = min(start + chunk, num_tokens)
        num_queries = end - start
        query_positions = token_positions[start:end]

        # kept is sorted, so the keys this chunk may read through the vertical part are a
        # prefix of each row: later kept keys are skipped, not masked.
        num_visible = int((kept <= end - 1 - local_window).sum(dim=-1).max().item())
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


def sparse_prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             kept: torch.Tensor, mode: str, local_window: int,
                             scale: float) -> torch.Tensor:
    """Prefill attention ``[H, n, d]`` (query dtype) under ``mode``, given kept positions.

    ``qkv``: causal attention among the kept tokens, zero rows for the others.
    ``kv``: every query reads the kept keys before it and itself.
    ``kv_local``: every query reads the kept keys at or before ``i - local_window``
    plus the dense causal band of the last ``local_window`` keys. ``dense``: dense.
    """
    if mode == "dense":
        return dense_causal_attention(query, key, value, scale)
    if mode == "qkv":
        return _kept_tokens_attention(query, key, value, kept, scale)
    if mode == "kv":
        return _kept_keys_with_band_attention(query, key, value, kept, 1, scale)
    if mode == "kv_local":
        if local_window < 1:
            raise ValueError(f"local_window must be >= 1, got {local_window}")
        return _kept_keys_with_band_attention(query, key, value, kept, local_window, scale)
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
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None],
                                          scale=scale, enable_gqa=True)
