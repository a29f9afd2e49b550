"""The methods the benchmarks compare: dense, ZipVL variants, and peers at equal budget.

* **ZipVL adaptive** (He et al., arXiv 2410.08584): ``zipvl.enable`` with a config.
* **ZipVL fixed ratio**: the paper's ablation, the ``zipvl.strategies.FixedRatio``
  strategy: the same ratio in every layer and sample, tokens still ranked by ZipVL's
  scores.
* **SnapKV-style** (Li et al., arXiv 2404.14469): dense prefill, the scores of an
  observation window of the last 32 queries only (no random probes), max-pooled
  over 5 neighbouring keys, a fixed ratio. Pure configuration:
  ``prefill="dense", num_recent_probes=32, num_random_probes=0, keep_last=32,
  score_pooling=5, strategy=FixedRatio(r)``. (SnapKV pools with an average by default;
  ZipVL's ``pool_scores`` is a max pool, the other variant SnapKV describes.)
* **StreamingLLM-style** (Xiao et al., arXiv 2309.17453): the cache keeps the 4
  first tokens (attention sinks) and the most recent ones, chosen by position
  alone: the ``zipvl.strategies.SinkAndRecent`` strategy, ``[0, 4) + [n - (p - 4), n)``
  with ``p = fixed_budget(n, r, keep_last)``. The prefill is dense (as in
  StreamingLLM's use as a cache-eviction baseline, and in kvpress's
  ``StreamingLLMPress``), so only the cache differs.

NVIDIA's kvpress presses run in their own environment: see ``kvpress_peer.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

import zipvl
from zipvl.patch import is_enabled
from zipvl.strategies import FixedRatio, SelectionStrategy, SinkAndRecent

STREAMING_SINK_TOKENS = 4
SNAPKV_WINDOW = 32
SNAPKV_POOLING = 5

@dataclass(frozen=True)
class Method:
    """One way to run the model.

    family: ``dense``, ``zipvl``, ``zipvl-fixed``, ``snapkv`` or ``streaming``.
    config: the ZipVL config, ``None`` for dense.
    """

    name: str
    family: str
    config: zipvl.ZipVLConfig | None = None

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family,
                "config": self.config.to_dict() if self.config else None}


DENSE = Method("dense", "dense")


def zipvl_method(name: str, **fields) -> Method:
    return Method(name, "zipvl", zipvl.ZipVLConfig(**fields))


def fixed_ratio_method(name: str, base: zipvl.ZipVLConfig, ratio: float) -> Method:
    """The paper's fixed-ratio ablation of ``base`` at ``ratio``."""
    return Method(name, "zipvl-fixed", dataclasses.replace(base, strategy=FixedRatio(_ratio(ratio))))


def snapkv_method(name: str, ratio: float) -> Method:
    config = zipvl.ZipVLConfig(prefill="dense", num_recent_probes=SNAPKV_WINDOW,
                               num_random_probes=0, keep_last=SNAPKV_WINDOW,
                               score_pooling=SNAPKV_POOLING,
                               strategy=FixedRatio(_ratio(ratio)))
    return Method(name, "snapkv", config)


def streaming_method(name: str, ratio: float, keep_last: int = 64) -> Method:
    strategy = SinkAndRecent(_ratio(ratio), sink_tokens=STREAMING_SINK_TOKENS)
    config = zipvl.ZipVLConfig(prefill="dense", keep_last=keep_last, strategy=strategy)
    return Method(name, "streaming", config)


def _ratio(ratio: float) -> float:
    return float(min(max(ratio, 1e-6), 1.0))


def prefill_stats(model: torch.nn.Module) -> zipvl.ZipVLStats | None:
    """``zipvl.stats`` of the latest prefill, or ``None`` when the model runs dense."""
    return zipvl.stats(model) if is_enabled(model) else None


@dataclass(frozen=True, eq=False)
class RecordingKept(SelectionStrategy):
    """Another strategy, unchanged, that also keeps its choice: ``kept[layer] = [Hk, p]`` (sample 0)."""

    inner: SelectionStrategy
    kept: dict[int, torch.Tensor]
    name = "recording"

    @property
    def has_adaptive_budget(self) -> bool:  # type: ignore[override]
        return self.inner.has_adaptive_budget

    def scored_budget(self, query, key, *, config, layer_idx, sample, scale):
        # An even spread keeps its cache positions after the last layer, and a dense
        # prefill's FLOPs do not depend on them; a sparse prefill's would, and its kept
        # sets are taken past this wrapper, so it is refused rather than miscounted.
        if config.prefill != "dense":
            raise NotImplementedError("the FLOP count of budget_spread 'even' with a sparse "
                                      "prefill is not recorded; use budget_spread 'per_layer'")
        return self.inner.scored_budget(query, key, config=config, layer_idx=layer_idx,
                                        sample=sample, scale=scale)

    def kept_positions(self, query, key, *, config, layer_idx, sample, scale):
        chosen = self.inner.kept_positions(query, key, config=config, layer_idx=layer_idx,
                                           sample=sample, scale=scale)
        if sample == 0:
            self.kept[layer_idx] = chosen.detach().cpu()
        return chosen


@contextmanager
def applied(model: torch.nn.Module, method: Method,
            kept: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Run ``model`` under ``method`` inside the block; the dense model again after it.

    kept: filled with the kept positions of each layer (first sample), which the FLOP
    counts need; leave it out of timed runs (it copies them to the CPU).
    """
    if method.config is None:
        yield
        return
    config = method.config
    if kept is not None:
        config = dataclasses.replace(config, strategy=RecordingKept(config.strategy, kept))
    zipvl.enable(model, config)
    try:
        yield
    finally:
        zipvl.disable(model)
