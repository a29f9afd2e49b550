"""Which tokens one layer keeps for one sample: the config's selection strategy, applied.

The strategies live in ``zipvl/strategies`` (the paper's adaptive budget by
default); this is the one place the attention code asks them, inside a
``zipvl.select`` profiler range.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from zipvl.config import ZipVLConfig


def select_for_layer(query: torch.Tensor, key: torch.Tensor, config: ZipVLConfig,
                     layer_idx: int, scale: float, sample: int = 0) -> tuple[torch.Tensor, int]:
    """Kept positions ``LongTensor[Hk, p]`` (rows sorted) and the budget ``p``.

    ``query [H, n, d]`` after RoPE, ``key [Hk, n, d]``, one sample without padding.
    """
    with record_function("zipvl.select"):
        kept = config.strategy.kept_positions(query, key, config=config, layer_idx=layer_idx,
                                              sample=sample, scale=scale)
    num_kv_heads = key.shape[0]
    if kept.ndim != 2 or kept.shape[0] != num_kv_heads:
        raise ValueError(f"{type(config.strategy).__name__} must return kept positions "
                         f"[Hk={num_kv_heads}, p], got {tuple(kept.shape)}")
    return kept.to(device=key.device, dtype=torch.long), int(kept.shape[1])
