"""ZipVL's adaptive budget: each layer keeps the fewest tokens holding ``tau`` of the probes' attention.

He et al., "ZipVL" (arXiv 2410.08584), Sec. 3.2, Eq. 6 for the budget and Eq. 7
for the ranking; ``shared/ZIPVL.md`` steps 1-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from zipvl.strategies.base import SelectionStrategy

if TYPE_CHECKING:
    import torch

    from zipvl.config import ZipVLConfig
    from zipvl.ranking import ProbeScores


@dataclass(frozen=True)
class AdaptiveBudget(SelectionStrategy):
    """The paper's selection; ``config.tau`` is the threshold (1.0 keeps every token)."""

    name: ClassVar[str] = "adaptive"
    has_adaptive_budget: ClassVar[bool] = True

    def kept_positions(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                       layer_idx: int, sample: int, scale: float) -> torch.Tensor:
        # torch is imported here, not at the top: job-file validation builds configs without it.
        from zipvl.ranking import every_position, keep_ranked

        if config.tau >= 1.0:  # every token is kept whatever the scores say: skip the probes
            return every_position(key)
        probes, budget = self.scored_budget(query, key, config=config, layer_idx=layer_idx,
                                            sample=sample, scale=scale)
        return keep_ranked(probes, budget, config)

    def scored_budget(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                      layer_idx: int, sample: int, scale: float) -> tuple[ProbeScores, int]:
        from torch.profiler import record_function

        from zipvl.budget import adaptive_budget
        from zipvl.ranking import score_probes

        probes = score_probes(query, key, config, layer_idx, scale)
        with record_function("zipvl.budget"):
            budget = adaptive_budget(probes.accumulated(), probes.total_mass, config.tau,
                                     config.keep_last)
        return probes, budget
