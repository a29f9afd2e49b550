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

from zipvl.host_transfer import to_device
from zipvl.probes import probe_positions
from zipvl.scores import normalize_summed, pool_scores, probe_attention_sums
from zipvl.select import select_tokens

if TYPE_CHECKING:
    from zipvl.config import ZipVLConfig


@dataclass(frozen=True)
class ProbeScores:
    """The probes' attention summed per KV head, ``[Hk, n]`` each.

    ``recent_sums`` over the last ``num_recent`` probes, ``earlier_sums`` over the
    others; ``positions [|P|]``: the probes, sorted; ``group``: query heads per KV head.
    """

    recent_sums: torch.Tensor
    earlier_sums: torch.Tensor
    positions: torch.Tensor
    num_recent: int
    group: int

    def accumulated(self) -> torch.Tensor:
        """Eq. 6's accumulated score ``[n]``: every probe and head summed."""
        return (self.recent_sums + self.earlier_sums).sum(dim=0)

    @property
    def total_mass(self) -> float:
        """``M = H * |P|``: each probe row of each head sums to one."""
        return float(self.recent_sums.shape[0] * self.group * self.positions.numel())


def every_position(key: torch.Tensor) -> torch.Tensor:
    """``[Hk, n]``: every position of ``key [Hk, n, d]`` kept."""
    num_kv_heads, num_tokens = key.shape[0], key.shape[1]
    return torch.arange(num_tokens, device=key.device).expand(num_kv_heads, num_tokens).contiguous()


def score_probes(query: torch.Tensor, key: torch.Tensor, config: ZipVLConfig, layer_idx: int,
                 scale: float) -> ProbeScores:
    """Steps 1-2: the probes of this layer and their attention over ``key``."""
    num_tokens = key.shape[1]
    with record_function("zipvl.probes"):
        host_positions = probe_positions(num_tokens, config.num_recent_probes,
                                         config.num_random_probes, config.seed, layer_idx)
        positions = to_device(host_positions, query.device)
    # probe_positions' last min(R, n) positions are the recent probes.
    num_recent = min(config.num_recent_probes, num_tokens)
    with record_function("zipvl.probe_attention"):
        recent_sums, earlier_sums = probe_attention_sums(query, key, positions,
                                                         host_positions.tolist(), num_recent,
                                                         scale)
    return ProbeScores(recent_sums, earlier_sums, positions, num_recent,
                       group=query.shape[0] // key.shape[0])


def importance(probes: ProbeScores, config: ZipVLConfig) -> torch.Tensor:
    """Step 4: each key's importance per KV head ``[Hk, n]``, as ``config.ranking`` and
    ``config.score_pooling`` rank."""
    with record_function("zipvl.importance"):
        if config.ranking == "recent":
            summed = probes.recent_sums
            positions = probes.positions[probes.positions.numel() - probes.num_recent:]
        else:
            summed = probes.recent_sums + probes.earlier_sums
            positions = probes.positions
        scores = normalize_summed(summed, positions, probes.group)
        if config.score_pooling > 1:
            scores = pool_scores(scores, config.score_pooling)
        return scores


def keep_ranked(probes: ProbeScores, budget: int, config: ZipVLConfig) -> torch.Tensor:
    """Steps 4-5: the ``budget`` most important positions per KV head, ``[Hk, budget]`` sorted."""
    scores = importance(probes, config)
    with record_function("zipvl.selection"):
        return select_tokens(scores, budget, config.keep_last, config.selection)
