"""ZipVL's adaptive budget, spread evenly over the layers (``budget_spread: even``, an extension).

The paper (He et al., arXiv 2410.08584, Eq. 6) gives every layer the budget its own
probes ask for. SnapKV (Li et al., arXiv 2404.14469) keeps the same share in every
layer. ``even`` takes the total from ZipVL and the spread from SnapKV: each layer
still scores its tokens and computes its adaptive budget at prefill, but nothing is
dropped until the last layer has one; then every layer of a sample keeps the mean of
that sample's budgets, ranked by its own scores. On SmolLM2 neither spread won at
every budget (README, the frontier: even ahead at 0.83 kept, behind at 0.71 and 0.89),
so the default stays per layer and this is an option.

The prefill is dense (``ZipVLConfig`` enforces it), so deferring the compression
changes no attention output; it costs memory: every layer holds its full K/V until
the prefill ends, as a dense cache would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from zipvl.cache import ZipVLLayer
from zipvl.config import ZipVLConfig
from zipvl.padding import PaddingLayout
from zipvl.ranking import ProbeScores, keep_ranked


@dataclass
class ScoredLayer:
    """One layer's prefill, scored but not yet compressed.

    ``probes[i]`` are sample ``i``'s scores and ``budgets[i]`` its adaptive budget;
    ``probes[i] is None`` where the sample keeps every token in this layer (a dense
    layer, a prompt under ``min_prefill_len``, an empty row), which then takes no part
    in the mean.
    """

    layer: ZipVLLayer | None
    probes: list[ProbeScores | None]
    budgets: list[int]
    layout: PaddingLayout
    num_kv_heads: int
    device: torch.device
    bytes_per_token: int


def even_budgets(scored: list[ScoredLayer]) -> list[int]:
    """Per sample, the mean of its scored layers' budgets, rounded up (its own length if none)."""
    batch = len(scored[0].budgets)
    means = []
    for sample in range(batch):
        budgets = [entry.budgets[sample] for entry in scored if entry.probes[sample] is not None]
        means.append(math.ceil(sum(budgets) / len(budgets)) if budgets
                     else scored[0].layout.counts[sample])
    return means


def compress_evenly(scored: dict[int, ScoredLayer], config: ZipVLConfig,
                    record_layer: Callable[[int, list[int], list[int], int], None]) -> None:
    """Compress every layer to the even budgets; ``record_layer(layer_idx, kept counts,
    prompt tokens, bytes per token)`` reports each layer's kept tokens."""
    budgets = even_budgets(list(scored.values()))
    for layer_idx in sorted(scored):
        entry = scored[layer_idx]
        counts = entry.layout.counts
        kept_list = []
        for sample, probes in enumerate(entry.probes):
            if probes is None:
                kept_list.append(_every_token(entry, sample))
            else:
                with record_function("zipvl.select"):
                    kept_list.append(keep_ranked(probes, min(budgets[sample], counts[sample]),
                                                 config))
        if entry.layer is not None:
            kept_in_prompt = [entry.layout.in_prompt(sample, kept)
                              for sample, kept in enumerate(kept_list)]
            with record_function("zipvl.compress"):
                entry.layer.compress(kept_in_prompt, prompt_tokens=counts)
        record_layer(layer_idx, [int(kept.shape[-1]) for kept in kept_list], counts,
                     entry.bytes_per_token)


def _every_token(entry: ScoredLayer, sample: int) -> torch.Tensor:
    num_tokens = entry.layout.counts[sample]
    positions = torch.arange(num_tokens, device=entry.device)
    return positions.expand(entry.num_kv_heads, num_tokens).contiguous()
