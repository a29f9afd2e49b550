"""ZipVL steps 1-5 for one sample of one layer: which tokens to keep.

Probes, probe attention, adaptive (or fixed) budget, normalised scores and
selection, as in ZipVL (He et al., arXiv 2410.08584, Sec. 3.2) and
``shared/ZIPVL.md``. Accumulated scores set the budget and normalised scores rank
the tokens, the pair the paper's Table D found best. ``ranking="recent"`` ranks by the recent
probes alone instead, SnapKV's observation window (Li et al., arXiv 2404.14469).
"""

from __future__ import annotations

import torch

from zipvl.budget import adaptive_budget, fixed_budget
from zipvl.config import ZipVLConfig
from zipvl.probes import probe_positions
from zipvl.scores import accumulated_scores, normalized_scores, pool_scores, probe_attention
from zipvl.select import select_tokens


def select_for_layer(query: torch.Tensor, key: torch.Tensor, config: ZipVLConfig,
                     layer_idx: int, scale: float) -> tuple[torch.Tensor, int]:
    """Kept positions ``LongTensor[Hk, p]`` (rows sorted) and the budget ``p``.

    ``query [H, n, d]`` after RoPE, ``key [Hk, n, d]``, one sample without padding.
    """
    num_heads, num_tokens, _ = query.shape
    num_kv_heads = key.shape[0]
    if config.fixed_ratio is None and config.tau >= 1.0:
        # Every token is kept whatever the scores say: skip the probes.
        all_positions = torch.arange(num_tokens, device=query.device)
        return all_positions.expand(num_kv_heads, num_tokens).contiguous(), num_tokens
    positions = probe_positions(num_tokens, config.num_recent_probes, config.num_random_probes,
                                config.seed, layer_idx, device=query.device)
    probs = probe_attention(query, key, positions, scale)
    if config.fixed_ratio is not None:
        budget = fixed_budget(num_tokens, config.fixed_ratio, config.keep_last)
    else:
        budget = adaptive_budget(accumulated_scores(probs), float(num_heads * positions.numel()),
                                 config.tau, config.keep_last)
    if config.ranking == "recent":
        # positions is sorted and the recent probes are the last positions of the prompt.
        num_recent = min(config.num_recent_probes, num_tokens)
        importance = normalized_scores(probs[:, -num_recent:], positions[-num_recent:],
                                       num_kv_heads)
    else:
        importance = normalized_scores(probs, positions, num_kv_heads)
    if config.score_pooling > 1:
        importance = pool_scores(importance, config.score_pooling)
    kept = select_tokens(importance, budget, config.keep_last, config.selection)
    return kept, budget
