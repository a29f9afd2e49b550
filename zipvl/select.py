"""Which tokens a layer keeps (ZipVL step 5).

Top-``p`` selection on the normalised scores follows ZipVL (He et al., arXiv
2410.08584, Eqs. 8-9); always keeping the last ``keep_last`` positions is the
decision recorded in ``shared/ZIPVL.md`` step 5.
"""

from __future__ import annotations

import torch


def select_tokens(normalized: torch.Tensor, budget: int, keep_last: int,
                  selection: str) -> torch.Tensor:
    """Kept positions ``LongTensor[Hk, p]``, each row sorted ascending.

    The last ``min(keep_last, n)`` positions are always kept; the remaining slots
    go to the highest scores among the other positions. ``per_head`` picks a set
    per KV head; ``shared`` picks one set from the scores summed over heads and
    repeats it. ``p = min(max(budget, min(keep_last, n)), n)``: a budget below
    ``keep_last`` cannot drop the always-kept positions.
    """
    if selection not in ("per_head", "shared"):
        raise ValueError(f"selection must be 'per_head' or 'shared', got {selection!r}")
    num_kv_heads, num_tokens = normalized.shape
    device = normalized.device
    num_last = min(keep_last, num_tokens)
    size = min(max(budget, num_last), num_tokens)
    if size >= num_tokens:
        return torch.arange(num_tokens, device=device).expand(num_kv_heads, num_tokens).contiguous()
    num_head = num_tokens - num_last
    last = torch.arange(num_head, num_tokens, device=device)
    scores = normalized.float().sum(dim=0, keepdim=True) if selection == "shared" else normalized
    top = torch.topk(scores[:, :num_head], size - num_last, dim=-1, sorted=False).indices
    chosen = torch.sort(top, dim=-1).values
    kept = torch.cat([chosen, last.expand(chosen.shape[0], num_last)], dim=-1)
    return kept.expand(num_kv_heads, size).contiguous()
