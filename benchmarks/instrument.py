"""Timings of ZipVL's steps, and the FLOPs each prefill variant must do.

The overhead ZipVL adds before its sparse attention pays off (probes, probe
attention, budget, scores, selection; the paper's Table E) is timed separately
from the attention itself from the ``torch.profiler`` ranges the library opens
(``zipvl.ranking``, ``zipvl.layer_policy``, ``zipvl.attention``), for the
duration of a ``with instrumented() as timings:`` block; nothing is patched:

* ``zipvl.select`` (steps 1-5 in all) and, inside it, ``zipvl.probes``,
  ``zipvl.probe_attention``, ``zipvl.budget``, ``zipvl.importance``,
  ``zipvl.selection``;
* ``zipvl.attention_kernel`` (the attention proper) and ``zipvl.compress``
  (dropping the cache to the kept tokens);
* the whole attention function: ``zipvl.prefill`` + ``zipvl.decode`` for ZipVL,
  and for the dense model torch's own ``aten::scaled_dot_product_attention``
  (transformers' SDPA glue around it, a transpose and a view, is not counted).

Everything else in the forward (linear layers, norms, RoPE, embedding, LM head)
is the difference to the total. The times are CPU times of the ranges: on CPU
that is the work; a GPU benchmark must synchronise around what it times instead.
The kept positions the FLOP counts need come from ``peers.applied(..., kept=)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

# Timings key -> the profiler ranges (or torch ops) it sums.
RANGES: dict[str, tuple[str, ...]] = {
    "select_total": ("zipvl.select",),
    "probes": ("zipvl.probes",),
    "probe_attention": ("zipvl.probe_attention",),
    "budget": ("zipvl.budget",),
    "importance": ("zipvl.importance",),
    "selection": ("zipvl.selection",),
    "attention_kernel": ("zipvl.attention_kernel",),
    "compress": ("zipvl.compress",),
    "attention_function": ("zipvl.prefill", "zipvl.decode"),
}
# The dense model's attention function: no ZipVL range, only torch's kernel call.
DENSE_ATTENTION = "aten::scaled_dot_product_attention"


@dataclass
class Timings:
    """Seconds and calls per timed step (``RANGES``' keys), filled when the block ends."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


@contextmanager
def instrumented() -> Iterator[Timings]:
    """Time ZipVL's steps and the attention functions inside the block (CPU profiler)."""
    timings = Timings()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        yield timings
    events = {event.key: event for event in profiler.key_averages()}
    for step, names in RANGES.items():
        found = [events[name] for name in names if name in events]
        if found:
            timings.seconds[step] = sum(event.cpu_time_total for event in found) / 1e6
            timings.calls[step] = sum(event.count for event in found)
    if "attention_function" not in timings.seconds and DENSE_ATTENTION in events:
        timings.seconds["attention_function"] = events[DENSE_ATTENTION].cpu_time_total / 1e6
        timings.calls["attention_function"] = events[DENSE_ATTENTION].count


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
    ``kv``). ``kept_dense`` / ``kept_dense_local``: a kept query reads its ``i + 1``
    causal keys, a dropped one its band plus (``kept_dense``) the kept keys
    ``j <= i - w``. ``dense`` (or no selection): all causal pairs.
    """
    if mode == "dense" or kept is None:
        return dense_pairs(num_tokens)
    per_head = []
    for row in kept.tolist():
        if mode == "qkv":
            per_head.append(dense_pairs(len(row)))
            continue
        if mode in ("kept_dense", "kept_dense_local"):
            per_head.append(_query_side_pairs(row, num_tokens, local_window,
                                              mode == "kept_dense"))
            continue
        window = 1 if mode == "kv" else local_window
        vertical = sum(max(0, num_tokens - j - window) for j in row)
        per_head.append(vertical + band_pairs(num_tokens, window))
    return round(sum(per_head) / len(per_head))


def _query_side_pairs(kept_row: list[int], num_tokens: int, window: int,
                      dropped_read_kept: bool) -> int:
    kept_set = set(kept_row)
    pairs = sum(i + 1 for i in kept_row)
    kept_before = 0  # kept keys j <= i - w, advanced with i
    for i in range(num_tokens):
        if i - window >= 0 and (i - window) in kept_set:
            kept_before += 1
        if i not in kept_set:
            pairs += min(window, i + 1) + (kept_before if dropped_read_kept else 0)
    return pairs


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
