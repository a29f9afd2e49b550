"""An experiment measured beside ZipVL's own modes: ``qkv`` plus a local band.

ZipVL's ``qkv`` prefill (He et al., arXiv 2410.08584, Sec. 3.3) gives the
tokens outside the kept set ``T`` a zero attention output in every layer; on
SmolLM2 that costs several percent of NLL (``shared/ZIPVL.md``). ``kv_local``
repairs it by letting every query read the kept keys plus a local band, but the
kept-key part is ``~ p/n`` of dense attention and, without a fused kernel, no
faster than dense SDPA on CPU. This experiment keeps ``qkv`` for the rows in
``T`` (attention among the kept tokens, ``~ (p/n)^2`` of dense) and gives every
row outside ``T`` attention over its causal local band of ``w`` keys only
(``n w`` pairs): an A-shape / sliding-window pattern (StreamingLLM, Xiao et al.,
arXiv 2309.17453; MInference, Jiang et al., arXiv 2407.02490) for the dropped
rows instead of zeros. Not a ZipVL mode: it is patched in for the duration of a
``with qkv_with_local_rows(window):`` block by wrapping the
``sparse_prefill_attention`` name that ``zipvl.attention`` calls, and only
changes what ``prefill="qkv"`` computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

import zipvl.attention
from zipvl.sparse_attention import sparse_prefill_attention


def qkv_with_local_rows_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  kept: torch.Tensor, window: int, scale: float) -> torch.Tensor:
    """``[H, n, d]``: ``qkv`` on the kept rows, a causal band of ``window`` keys elsewhere."""
    num_heads, num_tokens, _ = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    kept_rows = sparse_prefill_attention(query, key, value, kept, "qkv", window, scale)
    # kv_local with an empty kept set is exactly the causal band.
    no_keys = torch.empty(num_kv_heads, 0, dtype=torch.long, device=kept.device)
    band_rows = sparse_prefill_attention(query, key, value, no_keys, "kv_local", window, scale)
    is_kept = torch.zeros(num_kv_heads, num_tokens, dtype=torch.bool, device=kept.device)
    is_kept.scatter_(1, kept, True)
    is_kept = is_kept.repeat_interleave(group, dim=0)[:, :, None]
    return torch.where(is_kept, kept_rows, band_rows)


@contextmanager
def qkv_with_local_rows(window: int) -> Iterator[None]:
    """Inside the block, ``prefill="qkv"`` gives the rows outside ``T`` a local band."""
    original = zipvl.attention.sparse_prefill_attention

    def patched(query, key, value, kept, mode, local_window, scale):
        if mode == "qkv":
            return qkv_with_local_rows_attention(query, key, value, kept, window, scale)
        return original(query, key, value, kept, mode, local_window, scale)

    zipvl.attention.sparse_prefill_attention = patched
    try:
        yield
    finally:
        zipvl.attention.sparse_prefill_attention = original
