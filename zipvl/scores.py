"""Token scores from probe attention (ZipVL steps 2 and 4).

Probe attention and the accumulated score (for the budget) follow ZipVL
(He et al., arXiv 2410.08584) Eq. 6; the normalised score (for ranking) follows
Eq. 7, with the denominator counted from probe positions as ``shared/ZIPVL.md``
step 4 fixes. ``pool_scores`` is the observation-window pooling of SnapKV
(Li et al., arXiv 2404.14469), an extension measured against the paper's scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def probe_attention(query: torch.Tensor, key: torch.Tensor, probe_positions: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Causal attention probabilities of the probe queries, float32 ``[H, P, n]``.

    ``query [H, n, d]`` (after RoPE), ``key [Hk, n, d]``; the probe at position ``i``
    sees keys ``j <= i``. Only ``P x n`` scores are formed, never ``n x n``; query
    heads are grouped onto their KV head (head ``h`` reads KV head ``h // G``), so
    K is never repeated.
    """
    num_heads, num_tokens, _ = query.shape
    probe_query, key = _scaled_probe_queries(query, key, probe_positions, scale)
    probs = _causal_probe_softmax(probe_query, key, probe_positions)
    return probs.reshape(num_heads, probe_positions.numel(), num_tokens).to(torch.float32)


def _scaled_probe_queries(query: torch.Tensor, key: torch.Tensor, probe_positions: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Hk, G, P, d]`` probe queries times ``scale``, and ``key``, both in the compute dtype."""
    num_heads, _, head_dim = query.shape
    num_kv_heads = key.shape[0]
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    # The scale goes on the P x d probe queries, not on the [H, P, n] logits (at 8K a
    # scaled copy of the logits is ~30 MB per layer).
    probe_query = query.index_select(1, probe_positions).to(compute_dtype) * scale
    return (probe_query.view(num_kv_heads, num_heads // num_kv_heads, -1, head_dim),
            key.to(compute_dtype))


def _causal_probe_softmax(probe_query: torch.Tensor, key: torch.Tensor,
                          probe_positions: torch.Tensor) -> torch.Tensor:
    """Softmax ``[Hk, G, P, m]`` of ``probe_query [Hk, G, P, d]`` over ``key [Hk, m, d]``,
    probe ``i`` seeing keys ``j <= i`` (``m`` must exceed every position)."""
    num_kv_heads, group, num_probes, head_dim = probe_query.shape
    visible = key.shape[1]
    logits = torch.bmm(probe_query.reshape(num_kv_heads, group * num_probes, head_dim),
                       key.transpose(1, 2)).view(num_kv_heads, group, num_probes, visible)
    # The causal mask as a [P, m] additive bias added in place: a broadcast masked_fill
    # over the logits made the probes ~3x slower on CPU.
    future = torch.arange(visible, device=key.device)[None, :] > probe_positions[:, None]
    bias = torch.zeros(num_probes, visible, dtype=logits.dtype, device=key.device)
    logits.add_(bias.masked_fill_(future, float("-inf")))
    return torch.softmax(logits, dim=-1)


def accumulated_scores(probs: torch.Tensor) -> torch.Tensor:
    """Attention mass each key receives, summed over heads and probes: float32 ``[n]``."""
    return probs.sum(dim=(0, 1), dtype=torch.float32)


def probes_at_or_after(probe_positions: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``c_j = |{i in P : i >= j}|`` for every key ``j``, counted from positions.

    Counting non-zero probabilities instead would undercount: small probabilities
    underflow to zero.
    """
    sorted_positions = torch.sort(probe_positions).values
    keys = torch.arange(num_tokens, device=probe_positions.device, dtype=sorted_positions.dtype)
    before = torch.searchsorted(sorted_positions, keys, side="left")
    return sorted_positions.numel() - before


def normalized_scores(probs: torch.Tensor, probe_positions: torch.Tensor,
                      num_kv_heads: int) -> torch.Tensor:
    """Importance per KV head (paper Eq. 7): float32 ``[Hk, n]``.

    ``s[hk, j] = sum_{h in group(hk)} sum_{i in P, i >= j} A[h, i, j] / (G * c_j)``.
    The causal mask already made ``A[h, i, j] = 0`` for ``i < j``. Keys no probe
    can see (``c_j = 0``, only possible without recent probes) score 0.
    """
    num_heads, num_probes, num_tokens = probs.shape
    group = num_heads // num_kv_heads
    # A view, not a reshape: `probs` may be a slice over probes (the recent ones), which
    # a reshape would first copy whole.
    summed = probs.view(num_kv_heads, group, num_probes, num_tokens).sum(dim=(1, 2),
                                                                       dtype=torch.float32)
    return normalize_summed(summed, probe_positions, group)


def normalize_summed(summed: torch.Tensor, probe_positions: torch.Tensor,
                     group: int) -> torch.Tensor:
    """Eq. 7 from ``summed [Hk, n]``, the probes' attention already summed per KV head."""
    counts = probes_at_or_after(probe_positions, summed.shape[-1]).to(torch.float32)
    denominator = (counts * group).clamp_min(1.0)
    return torch.where(counts > 0, summed / denominator, torch.zeros_like(summed))


def probe_attention_sums(query: torch.Tensor, key: torch.Tensor, probe_positions: torch.Tensor,
                         host_positions: list[int], num_recent: int, scale: float,
                         chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``probe_attention`` summed per KV head, without forming ``[H, P, n]``: float32 ``[Hk, n]`` x 2.

    Returns the sums over the last ``num_recent`` probes and over the earlier ones.
    ``host_positions`` is ``probe_positions`` as Python ints (sorted), so the chunk
    bounds cost no device synchronisation. The earlier probes go in chunks of
    ``chunk`` and a chunk reads only the keys its last probe can see (with 64 probes
    spread uniformly that skips about 3/8 of their keys), and a chunk's probabilities
    are summed while they are still in cache. (At 8K on CPU, about 3x faster than
    ``probe_attention`` followed by the sums.)
    """
    num_tokens = query.shape[1]
    num_probes = len(host_positions)
    num_earlier = num_probes - num_recent
    probe_query, key = _scaled_probe_queries(query, key, probe_positions, scale)
    recent = torch.zeros(key.shape[0], num_tokens, dtype=torch.float32, device=query.device)
    earlier = torch.zeros_like(recent)
    starts = [*range(0, num_earlier, chunk), num_earlier]
    spans = [*zip(starts[:-1], starts[1:]), (num_earlier, num_probes)]
    for start, stop in spans:
        if stop <= start:
            continue
        visible = host_positions[stop - 1] + 1
        probs = _causal_probe_softmax(probe_query[:, :, start:stop], key[:, :visible],
                                      probe_positions[start:stop])
        target = recent if start >= num_earlier else earlier
        target[:, :visible] += probs.sum(dim=(1, 2), dtype=torch.float32)
    return recent, earlier


def pool_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max-pool ``scores [Hk, n]`` over ``kernel`` neighbouring keys (SnapKV), same shape.

    Pooling keeps the neighbours of a salient key, so whole phrases or image
    patches survive rather than isolated tokens.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pooling kernel must be an odd integer >= 1, got {kernel}")
    if kernel == 1 or scores.shape[-1] == 0:
        return scores
    pooled = F.max_pool1d(scores.unsqueeze(0), kernel_size=kernel, stride=1,
                          padding=kernel // 2)
    return pooled.squeeze(0)
