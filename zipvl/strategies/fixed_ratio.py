"""The paper's fixed-ratio ablation: every layer keeps ``ceil(ratio * n)`` tokens, ranked by ZipVL's scores.

He et al., "ZipVL" (arXiv 2410.08584), the fixed-ratio baseline its adaptive
ratio is compared against. With the SnapKV settings (``num_random_probes=0``, a
32-query window, ``score_pooling=5``, dense prefill) it is SnapKV's selection
(Li et al., arXiv 2404.14469).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from zipvl.strategies.base import SelectionStrategy, check_ratio

if TYPE_CHECKING:
    import torch

    from zipvl.config import ZipVLConfig


@dataclass(frozen=True)
class FixedRatio(SelectionStrategy):
    """ratio: the share of the prompt each layer keeps, in (0, 1] (at least ``keep_last``)."""

    ratio: float
    name: ClassVar[str] = "fixed_ratio"

    def __post_init__(self) -> None:
        check_ratio(self.name, self.ratio)

    def kept_positions(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                       layer_idx: int, sample: int, scale: float) -> torch.Tensor:
        from zipvl.budget import fixed_budget  # torch, imported lazily (see adaptive.py)
        from zipvl.ranking import keep_ranked, score_probes

        probes = score_probes(query, key, config, layer_idx, scale)
        budget = fixed_budget(key.shape[1], self.ratio, config.keep_last)
        return keep_ranked(probes, budget, config)
