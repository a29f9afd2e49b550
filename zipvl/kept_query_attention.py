"""Query-side sparse prefill: kept queries attend densely, dropped queries sparsely.

ZipVL's sparse prefill (He et al., arXiv 2410.08584, Sec. 3.3) gives the dropped
tokens no attention output; ``kv`` / ``kv_local`` instead let every query read
only the kept keys. Both damage the cached keys and values of the *kept* tokens
of later layers, because in earlier layers those tokens lost attention to the
dropped ones (issue 13's probe: greedy agreement 0.56 for ``kv_local``, 0.76 with
the kept rows dense). The modes here pick the sparsity per query instead:

* ``kept_dense``: a kept query reads every key before it; a dropped query reads
  the kept keys at or before ``i - w`` plus the causal band ``(i - w, i]``
  (``kv_local``'s pattern, MInference's vertical-plus-slash, Jiang et al.,
  arXiv 2407.02490).
* ``kept_dense_local``: the same, but a dropped query reads the band only, the
  cheapest pattern that still gives every token an output (StreamingLLM's
  window, Xiao et al., arXiv 2309.17453, without its sinks).

Costs, in shares of dense attention at kept ratio ``r``: about ``r`` for the
kept rows, plus ``(1 - r) r`` (``kept_dense``) or ``(1 - r) w / n``
(``kept_dense_local``) for the dropped rows.

One kernel serves every part: queries at sorted positions ``[Hk, m]`` over the
keys ``j <= i`` that are either in the band ``(i - w, i]`` or in a visible set.
Per chunk of consecutive query rows (positions ``s`` to ``e``), the visible keys
``j <= s - w`` are a prefix every row reads, run unmasked; the slice
``(s - w, e]`` runs with a mask; on CPU the two are merged by log-sum-exp
(``sparse_attention`` has the identity), elsewhere concatenated under one mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zipvl.partial_attention import (
    attention_with_lse,
    gather_tokens,
    has_flash_with_lse,
    merge_partial_attention,
)

KEPT_QUERY_MODES: tuple[str, ...] = ("kept_dense", "kept_dense_local")
# Query rows per chunk: the masked slice spans the chunk's positions plus the window.
_QUERY_CHUNK = 128


def kept_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         kept: torch.Tensor, mode: str, local_window: int,
                         scale: float) -> torch.Tensor:
    """Prefill attention ``[H, n, d]`` under a query-side mode (``KEPT_QUERY_MODES``).

    ``query [H, n, d]``, ``key, value [Hk, n, d]``, ``kept [Hk, p]`` sorted per KV head.
    """
    if mode not in KEPT_QUERY_MODES:
        raise ValueError(f"unknown query-side prefill mode {mode!r}")
    num_heads, num_tokens, head_dim = query.shape
    num_kv_heads, num_kept = kept.shape
    group = num_heads // num_kv_heads
    grouped_query = query.view(num_kv_heads, group, num_tokens, head_dim)
    output = torch.empty_like(grouped_query)
    # Kept rows: every key before them is visible (the band of width 1 is the row itself).
    _positioned_attention(grouped_query, key, value, kept, None, 1, scale, output)
    if num_kept < num_tokens:
        is_kept = torch.zeros(num_kv_heads, num_tokens, dtype=torch.bool, device=key.device)
        is_kept.scatter_(1, kept, True)
        # Each row holds n - p dropped positions, in increasing order.
        dropped = (~is_kept).nonzero()[:, 1].view(num_kv_heads, num_tokens - num_kept)
        visible = kept if mode == "kept_dense" else kept[:, :0]
        _positioned_attention(grouped_query, key, value, dropped, visible, local_window, scale,
                              output)
    return output.view(num_heads, num_tokens, head_dim)


def _positioned_attention(grouped_query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          positions: torch.Tensor, visible: torch.Tensor | None,
                          local_window: int, scale: float, output: torch.Tensor) -> None:
    """Rows ``positions [Hk, m]`` of ``output [Hk, G, n, d]``: each over its allowed keys.

    Row ``i`` reads key ``j`` iff ``j <= i`` and (``j > i - w`` or ``j`` in
    ``visible [Hk, v]``, sorted; ``None``: every key).
    """
    num_kv_heads, group, num_tokens, head_dim = grouped_query.shape
    num_rows = positions.shape[1]
    if num_rows == 0:
        return
    split = has_flash_with_lse(grouped_query)
    if visible is None:
        # Every key visible: the prefix is the keys themselves, no gathered copy.
        visible_keys, visible_values = key, value
        visible = torch.arange(num_tokens, device=key.device).expand(num_kv_heads, num_tokens)
    else:
        visible_keys, visible_values = gather_tokens(key, visible), gather_tokens(value, visible)
    is_visible = torch.zeros(num_kv_heads, num_tokens, dtype=torch.bool, device=key.device)
    is_visible.scatter_(1, visible, True)
    chunk_starts = list(range(0, num_rows, _QUERY_CHUNK))
    chunk_ends = [min(start + _QUERY_CHUNK, num_rows) - 1 for start in chunk_starts]
    # Every shape below is read back in one transfer: first and last position per chunk, and
    # how many visible keys lie at or before first - w (the unmasked prefix).
    firsts = positions[:, chunk_starts]
    lasts = positions[:, chunk_ends]
    prefix_lengths = torch.searchsorted(visible.contiguous(),
                                        (firsts - local_window).contiguous(), right=True)
    layout = torch.stack([firsts, lasts, prefix_lengths]).tolist()
    for kv_head in range(num_kv_heads):
        head_query = grouped_query[kv_head]
        for chunk, (row_start, row_end) in enumerate(zip(chunk_starts, chunk_ends)):
            first, last, prefix_length = (layout[part][kv_head][chunk] for part in range(3))
            rows = positions[kv_head, row_start:row_end + 1]
            chunk_query = head_query.index_select(1, rows)  # [G, q, d]
            slice_start = max(0, first - local_window + 1)
            offset = rows[:, None] - torch.arange(slice_start, last + 1, device=key.device)[None]
            allowed = (offset >= 0) & ((offset < local_window)
                                       | is_visible[kv_head, None, slice_start:last + 1])
            slice_keys = key[kv_head, slice_start:last + 1]
            slice_values = value[kv_head, slice_start:last + 1]
            prefix_keys = visible_keys[kv_head, :prefix_length]
            prefix_values = visible_values[kv_head, :prefix_length]
            output[kv_head, :, rows] = _attend(chunk_query, prefix_keys, prefix_values,
                                               slice_keys, slice_values, allowed, scale, split)


def _attend(chunk_query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor,
            slice_keys: torch.Tensor, slice_values: torch.Tensor, allowed: torch.Tensor,
            scale: float, split: bool) -> torch.Tensor:
    """``chunk_query [G, q, d]`` over an unmasked prefix and a masked slice: ``[G, q, d]``."""
    group, num_queries, head_dim = chunk_query.shape
    if not split:
        keys = torch.cat([prefix_keys, slice_keys])
        values = torch.cat([prefix_values, slice_values])
        mask = torch.cat([allowed.new_ones(num_queries, prefix_keys.shape[0]), allowed], dim=1)
        return F.scaled_dot_product_attention(
            chunk_query, keys[None].expand(group, -1, -1), values[None].expand(group, -1, -1),
            attn_mask=mask[None].expand(group, -1, -1), scale=scale)
    additive = torch.zeros(allowed.shape, dtype=chunk_query.dtype, device=chunk_query.device)
    additive.masked_fill_(~allowed, float("-inf"))
    slice_shape = (1, group, slice_keys.shape[0], head_dim)
    output_slice, lse_slice = attention_with_lse(
        chunk_query[None], slice_keys[None, None].expand(slice_shape),
        slice_values[None, None].expand(slice_shape),
        additive[None, None].expand(1, group, num_queries, -1), scale)
    if prefix_keys.shape[0] == 0:
        return output_slice[0]
    # The G query heads read the same unmasked prefix: one call with G * q rows.
    output_prefix, lse_prefix = attention_with_lse(
        chunk_query.reshape(1, 1, group * num_queries, head_dim), prefix_keys[None, None],
        prefix_values[None, None], None, scale)
    return merge_partial_attention(output_prefix.view(group, num_queries, head_dim),
                                   lse_prefix.view(group, num_queries), output_slice[0],
                                   lse_slice[0]).to(chunk_query.dtype)
