"""The score-based half of ZipVL's selection, shared by the strategies that rank tokens.

Steps 1, 2, 4 and 5 of ``shared/ZIPVL.md`` (He et al., arXiv 2410.08584,
Sec. 3.2): probe queries, their attention over the keys, each key's normalised
importance (Eq. 7) and the top ``p`` per head; the budget ``p`` (step 3) is the
strategy's. ``config.ranking="recent"`` ranks by the recent probes alone,
SnapKV's observation window (Li et al., arXiv 2404.14469). Each step runs in a
``torch.profiler`` range named ``zipvl.<step>`` so a profiler can time it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from zipvl.probes import probe_positions
from zipvl.scores import normalized_scores, pool_scores, probe_attention
from zipvl.select import select_tokens

if TYPE_CHECKING:
    from zipvl.config import ZipVLConfig


@dataclass(frozen=True)
class ProbeScores:
    """``probs [H, |P|, n]``: the probes' attention; ``positions [|P|]``: the probes, sorted."""

    probs: torch.Tensor
    positions: torch.Tensor


def every_position(key: torch.Tensor) -> torch.Tensor:
    """``[Hk, n]``: every position of ``key [Hk, n, d]`` kept."""
    num_kv_heads, num_tokens = key.shape[0], key.shape[1]
    return torch.arange(num_tokens, device=key.device).expand(num_kv_heads, num_tokens).contiguous()


def score_probes(query: torch.Tensor, key: torch.Tensor, config: ZipVLConfig, layer_idx: int,
                 scale: float) -> ProbeScores:
    """Steps 1-2: the probes of this layer and their attention over ``key``."""
    with record_function("zipvl.probes"):
        positions = probe_positions(key.shape[1], config.num_recent_probes,
                                    config.num_random_probes, config.seed, layer_idx,
                                    device=query.device)
    with record_function("zipvl.probe_attention"):
        probs = probe_attention(query, key, positions, scale)
    return ProbeScores(probs, positions)


def keep_ranked(probes: ProbeScores, budget: int, config: ZipVLConfig,
                num_kv_heads: int) -> torch.Tensor:
    """Steps 4-5: the ``budget`` most important positions per KV head, ``[Hk, budget]`` sorted."""
    with record_function("zipvl.importance"):
        probs, positions = probes.probs, probes.positions
        if config.ranking == "recent":
            # positions is sorted and the recent probes are the last positions of the prompt.
            num_recent = min(config.num_recent_probes, probs.shape[-1])
            probs, positions = probs[:, -num_recent:], positions[-num_recent:]
        importance = normalized_scores(probs, positions, num_kv_heads)
        if config.score_pooling > 1:
            importance = pool_scores(importance, config.score_pooling)
    with record_function("zipvl.selection"):
        return select_tokens(importance, budget, config.keep_last, config.selection)
