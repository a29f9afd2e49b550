"""The interface every selection strategy implements."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from zipvl.config import ZipVLConfig
    from zipvl.ranking import ProbeScores


class SelectionStrategy:
    """Chooses the kept positions of one unpadded sample in one layer.

    Subclasses are frozen dataclasses (their fields are the strategy's own
    parameters; ``ZipVLConfig`` carries the shared ones: probes, ``keep_last``,
    ranking, pooling) with a ``name`` for config files.
    """

    name: ClassVar[str]
    # True where the strategy sets a budget from the scores and ranks apart
    # (``scored_budget``), so the budget can be spread over the layers
    # (``ZipVLConfig.budget_spread``).
    has_adaptive_budget: ClassVar[bool] = False

    def kept_positions(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                       layer_idx: int, sample: int, scale: float) -> torch.Tensor:
        """``LongTensor[Hk, p]`` of kept positions, each row sorted.

        ``query [H, n, d]`` after RoPE and ``key [Hk, n, d]`` of sample number
        ``sample`` of the batch, without padding.
        """
        raise NotImplementedError

    def scored_budget(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                      layer_idx: int, sample: int, scale: float) -> tuple[ProbeScores, int]:
        """The probes' scores and this layer's own budget, before the top ``p`` are taken.

        Only strategies with ``has_adaptive_budget`` implement it.
        """
        raise NotImplementedError(f"{self.name} sets no budget of its own to spread")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]


def check_ratio(strategy: str, ratio: Any) -> None:
    """A kept share must be a number in (0, 1]; raises ``ValueError`` naming the field."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"{strategy}.ratio must be in (0, 1], got {ratio!r}")
