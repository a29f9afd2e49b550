"""Timers around ZipVL's steps, and the FLOPs each prefill variant must do.

The overhead ZipVL adds before its sparse attention pays off (probes, probe
attention, budget, scores, selection; the paper's Table E) is timed separately
from the attention itself by wrapping the functions the integration calls, for
the duration of a ``with instrumented() as timings:`` block:

* ``zipvl.attention.select_for_layer`` (steps 1-5 in all) and, inside it, the
  names ``zipvl.layer_policy`` imported: ``probe_positions``, ``probe_attention``,
  ``accumulated_scores`` + ``adaptive_budget``/``fixed_budget`` (budget),
  ``normalized_scores`` + ``pool_scores`` (importance), ``select_tokens``;
* ``zipvl.attention.sparse_prefill_attention`` / ``dense_causal_attention`` /
  ``decode_attention`` (the attention proper);
* ``ZipVLLayer.compress`` (dropping the cache to the kept tokens);
* the whole registered attention function, ``"zipvl"`` or ``"sdpa"`` (swapped in
  transformers' ``ALL_ATTENTION_FUNCTIONS`` registry and put back afterwards).

Everything else in the forward (linear layers, norms, RoPE, embedding, LM head)
is the difference to the total. Wrappers cost microseconds per call; on CPU the
timings need no device synchronisation.

The selection wrapper also keeps the kept positions, from which
``attention_pairs`` counts the (query, key) pairs each prefill mode must compute.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import zipvl.attention
import zipvl.layer_policy
from zipvl.cache import ZipVLLayer

STEP_GROUPS: dict[str, tuple[str, ...]] = {
    "probes": ("probe_positions",),
    "probe_attention": ("probe_attention",),
    "budget": ("accumulated_scores", "adaptive_budget", "fixed_budget"),
    "importance": ("normalized_scores", "pool_scores"),
    "selection": ("select_tokens",),
}


@dataclass
class Timings:
    """Seconds per timed step, summed over calls; kept positions per layer."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kept: dict[int, torch.Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.kept.clear()


def _timed(function: Callable, name: str, timings: Timings) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings.seconds[name] += time.perf_counter() - start
            timings.calls[name] += 1
    wrapper.__wrapped__ = function
    return wrapper


@contextmanager
def instrumented() -> Iterator[Timings]:
    """Time ZipVL's steps and the attention functions inside the block."""
    timings = Timings()
    saved: list[tuple[object, str, object]] = []

    def swap(owner: object, name: str, replacement: object) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    for group, names in STEP_GROUPS.items():
        for name in names:
            swap(zipvl.layer_policy, name, _timed(getattr(zipvl.layer_policy, name), group, timings))

    original_select = zipvl.attention.select_for_layer

    def select_and_keep(query, key, config, layer_idx, scale):
        start = time.perf_counter()
        kept, budget = original_select(query, key, config, layer_idx, scale)
        timings.seconds["select_total"] += time.perf_counter() - start
        timings.calls["select_total"] += 1
        timings.kept[layer_idx] = kept.detach().cpu()
        return kept, budget

    swap(zipvl.attention, "select_for_layer", select_and_keep)
    for name in ("sparse_prefill_attention", "dense_causal_attention", "decode_attention"):
        swap(zipvl.attention, name, _timed(getattr(zipvl.attention, name), "attention_kernel",
                                           timings))
    swap(ZipVLLayer, "compress", _timed(ZipVLLayer.compress, "compress", timings))
    mapping = ALL_ATTENTION_FUNCTIONS._global_mapping
    for implementation in ("zipvl", "sdpa"):
        if implementation in mapping:
            original = mapping[implementation]
            saved.append((mapping, implementation, original))
            mapping[implementation] = _timed(original, "attention_function", timings)
    try:
        yield timings
    finally:
        for owner, name, original in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = original
            else:
                setattr(owner, name, original)


# ---- FLOPs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the FLOP counts need from the model config."""

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads, head_dim,
                   config.vocab_size)

    def linear_flops_per_token(self) -> int:
        """q, k, v, o projections and the gated MLP of all layers (multiply-add = 2)."""
        attention = (self.hidden * self.num_heads * self.head_dim * 2
                     + self.hidden * self.num_kv_heads * self.head_dim * 2)
        mlp = 3 * self.hidden * self.intermediate
        return 2 * (attention + mlp) * self.num_layers

    def lm_head_flops(self, tokens: int = 1) -> int:
        return 2 * self.hidden * self.vocab * tokens

    def pair_flops(self) -> int:
        """FLOPs of one (query, key) pair in one query head: QK dot and PV axpy."""
        return 2 * 2 * self.head_dim


def dense_pairs(num_tokens: int) -> int:
    """Causal (query, key) pairs of one head: ``n (n + 1) / 2``."""
    return num_tokens * (num_tokens + 1) // 2


def band_pairs(num_tokens: int, window: int) -> int:
    """Pairs of a causal band of ``window`` keys (query ``i`` reads ``(i - w, i]``)."""
    return sum(min(window, i + 1) for i in range(num_tokens)) if window < num_tokens \
        else dense_pairs(num_tokens)


def attention_pairs(mode: str, kept: torch.Tensor | None, num_tokens: int,
                    local_window: int) -> int:
    """(query, key) pairs one query head of a KV group must compute, summed over KV heads
    and divided by their number (the average per head), for ``kept [Hk, p]``.

    ``qkv``: causal among the kept tokens. ``kv``/``kv_local``: every query reads
    the kept keys ``j <= i - w`` plus its causal band of ``w`` keys (``w = 1`` for
    ``kv``). ``dense`` (or no selection): all causal pairs.
    """
    if mode == "dense" or kept is None:
        return dense_pairs(num_tokens)
    per_head = []
    for row in kept.tolist():
        if mode == "qkv":
            per_head.append(dense_pairs(len(row)))
            continue
        window = 1 if mode == "kv" else local_window
        vertical = sum(max(0, num_tokens - j - window) for j in row)
        per_head.append(vertical + band_pairs(num_tokens, window))
    return round(sum(per_head) / len(per_head))


def probe_pairs(num_tokens: int, num_probes: int) -> int:
    """Pairs of the probe attention (QK only, so counted at half a pair each)."""
    return num_probes * num_tokens // 2


def measured_matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Float32 matmul throughput of this machine with torch's threads: the compute peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size ** 3 / seconds / 1e9
