"""StreamingLLM's selection by position: the first tokens (attention sinks) and the most recent.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (arXiv
2309.17453), used as a cache-eviction baseline as in kvpress's
``StreamingLLMPress``: no scores are computed; with ``prefill="dense"`` only the
cache differs from dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from zipvl.strategies.base import SelectionStrategy, check_ratio

if TYPE_CHECKING:
    import torch

    from zipvl.config import ZipVLConfig


@dataclass(frozen=True)
class SinkAndRecent(SelectionStrategy):
    """ratio: the share kept, ``ceil(ratio * n)`` (at least ``keep_last``); sink_tokens: first tokens kept."""

    ratio: float
    sink_tokens: int = 4
    name: ClassVar[str] = "sink_and_recent"

    def __post_init__(self) -> None:
        check_ratio(self.name, self.ratio)
        if isinstance(self.sink_tokens, bool) or not isinstance(self.sink_tokens, int) \
                or self.sink_tokens < 0:
            raise ValueError(f"sink_and_recent.sink_tokens must be a non-negative integer, "
                             f"got {self.sink_tokens!r}")

    def kept_positions(self, query: torch.Tensor, key: torch.Tensor, *, config: ZipVLConfig,
                       layer_idx: int, sample: int, scale: float) -> torch.Tensor:
        import torch  # imported lazily (see adaptive.py)

        from zipvl.budget import fixed_budget

        num_kv_heads, num_tokens = key.shape[0], key.shape[1]
        budget = fixed_budget(num_tokens, self.ratio, config.keep_last)
        num_sink = min(self.sink_tokens, budget)
        recent_start = max(num_sink, num_tokens - (budget - num_sink))
        positions = torch.cat([torch.arange(num_sink, device=key.device),
                               torch.arange(recent_start, num_tokens, device=key.device)])
        return positions.expand(num_kv_heads, positions.numel()).contiguous()
