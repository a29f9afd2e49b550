"""The methods the benchmarks compare: dense, ZipVL variants, and peers at equal budget.

* **ZipVL adaptive** (He et al., arXiv 2410.08584): ``zipvl.enable`` with a config.
* **ZipVL fixed ratio**: the paper's ablation, ``ZipVLConfig.fixed_ratio``: the
  same ratio in every layer and sample, tokens still ranked by ZipVL's scores.
* **SnapKV-style** (Li et al., arXiv 2404.14469): dense prefill, the scores of an
  observation window of the last 32 queries only (no random probes), max-pooled
  over 5 neighbouring keys, a fixed ratio. Pure configuration:
  ``prefill="dense", num_recent_probes=32, num_random_probes=0, keep_last=32,
  score_pooling=5, fixed_ratio=r``. (SnapKV pools with an average by default;
  ZipVL's ``pool_scores`` is a max pool, the other variant SnapKV describes.)
* **StreamingLLM-style** (Xiao et al., arXiv 2309.17453): the cache keeps the 4
  first tokens (attention sinks) and the most recent ones, chosen by position
  alone. This needs a selection that ignores scores, so it goes through the
  integration's selection hook: ``zipvl.patch.runtime_state(model).kept_override``
  is a callable ``(layer_idx, sample, num_tokens) -> kept [Hk, p]`` that
  ``zipvl.attention._choose_tokens`` calls instead of
  ``zipvl.layer_policy.select_for_layer`` when it returns a tensor. Here it returns
  ``[0, 4) + [n - (p - 4), n)`` with ``p = fixed_budget(n, r, keep_last)``; the
  prefill is dense (as in StreamingLLM's use as a cache-eviction baseline, and in
  kvpress's ``StreamingLLMPress``), so only the cache differs.

NVIDIA's kvpress presses run in their own environment: see ``kvpress_peer.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

import zipvl
from benchmarks.experimental import qkv_with_local_rows
from zipvl.attention import KeptOverride
from zipvl.budget import fixed_budget
from zipvl.patch import is_enabled, runtime_state

STREAMING_SINK_TOKENS = 4
SNAPKV_WINDOW = 32
SNAPKV_POOLING = 5

@dataclass(frozen=True)
class Method:
    """One way to run the model.

    family: ``dense``, ``zipvl``, ``zipvl-fixed``, ``snapkv`` or ``streaming``.
    config: the ZipVL config, ``None`` for dense.
    streaming_ratio: for ``streaming``, the fixed ratio of the sink + recent selection.
    local_rows_window: for ``experimental``, ``prefill="qkv"`` with a local band of this
        many keys for the rows outside the kept set (``experimental.py``).
    """

    name: str
    family: str
    config: zipvl.ZipVLConfig | None = None
    streaming_ratio: float | None = None
    local_rows_window: int | None = None

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family,
                "config": self.config.to_dict() if self.config else None,
                "streaming_ratio": self.streaming_ratio,
                "local_rows_window": self.local_rows_window}


DENSE = Method("dense", "dense")


def zipvl_method(name: str, **fields) -> Method:
    return Method(name, "zipvl", zipvl.ZipVLConfig(**fields))


def fixed_ratio_method(name: str, base: zipvl.ZipVLConfig, ratio: float) -> Method:
    """The paper's fixed-ratio ablation of ``base`` at ``ratio``."""
    return Method(name, "zipvl-fixed", dataclasses.replace(base, fixed_ratio=_ratio(ratio)))


def snapkv_method(name: str, ratio: float) -> Method:
    config = zipvl.ZipVLConfig(prefill="dense", num_recent_probes=SNAPKV_WINDOW,
                               num_random_probes=0, keep_last=SNAPKV_WINDOW,
                               score_pooling=SNAPKV_POOLING, fixed_ratio=_ratio(ratio))
    return Method(name, "snapkv", config)


def streaming_method(name: str, ratio: float, keep_last: int = 64) -> Method:
    # The config only sets dense prefill and keep_last; the override picks the tokens.
    config = zipvl.ZipVLConfig(prefill="dense", keep_last=keep_last, fixed_ratio=_ratio(ratio))
    return Method(name, "streaming", config, streaming_ratio=_ratio(ratio))


def qkv_local_rows_method(name: str, window: int, **fields) -> Method:
    """The experimental ``qkv`` + local band for dropped rows (``experimental.py``)."""
    return Method(name, "experimental", zipvl.ZipVLConfig(prefill="qkv", **fields),
                  local_rows_window=window)


def _ratio(ratio: float) -> float:
    return float(min(max(ratio, 1e-6), 1.0))


def sink_and_recent(num_kv_heads: int, ratio: float, keep_last: int,
                    sink: int = STREAMING_SINK_TOKENS) -> KeptOverride:
    """StreamingLLM's selection by position: ``sink`` first tokens plus the most recent."""

    def override(layer_idx: int, sample: int, num_tokens: int) -> torch.Tensor:
        budget = fixed_budget(num_tokens, ratio, keep_last)
        num_sink = min(sink, budget)
        recent_start = max(num_sink, num_tokens - (budget - num_sink))
        positions = torch.cat([torch.arange(num_sink), torch.arange(recent_start, num_tokens)])
        return positions.expand(num_kv_heads, positions.numel()).contiguous()

    return override


def prefill_stats(model: torch.nn.Module) -> zipvl.ZipVLStats | None:
    """``zipvl.stats`` of the latest prefill, or ``None`` when the model runs dense."""
    return zipvl.stats(model) if is_enabled(model) else None


@contextmanager
def applied(model: torch.nn.Module, method: Method) -> Iterator[None]:
    """Run ``model`` under ``method`` inside the block; the dense model again after it."""
    if method.config is None:
        yield
        return
    zipvl.enable(model, method.config)
    try:
        if method.family == "streaming":
            num_kv_heads = model.config.get_text_config(decoder=True).num_key_value_heads
            runtime_state(model).kept_override = sink_and_recent(
                num_kv_heads, method.streaming_ratio, method.config.keep_last)
        with ExitStack() as stack:
            if method.local_rows_window is not None:
                stack.enter_context(qkv_with_local_rows(method.local_rows_window))
            yield
    finally:
        zipvl.disable(model)
