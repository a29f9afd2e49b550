"""Micro-benchmark: one layer's prefill attention kernel, dense SDPA against ZipVL's modes.

Times, side by side in one process, one attention call of SmolLM2-135M's shape
(9 query / 3 KV heads, head dim 64, float32, CPU) at ``n`` tokens: dense causal
SDPA and every sparse prefill mode through ``sparse_prefill_attention``: ``qkv``
(causal attention among the kept tokens), ``kv`` and ``kv_local`` (kept keys plus
a causal band of ``w`` keys), ``kept_dense`` and ``kept_dense_local`` (kept queries
over every key; dropped queries ``kv_local`` or the band only). ``kv_local`` also
runs as the old fused-mask kernel (one masked SDPA call per query chunk) and as
the split kernel at the ``--chunks`` sizes. Kept positions are random, sorted per
KV head, with the last 64 positions always kept, as ZipVL's selection does.
Variants run interleaved per repetition, so slow phases of a shared machine hit
them alike; the median and the minimum are reported.

**Ceiling.** Each mode's (query, key) pairs are counted exactly for the kept
positions (``benchmarks.instrument.attention_pairs``). At dense SDPA's measured
rate those pairs would take ``dense_ms x pairs / dense_pairs``: that is the
mode's ceiling, and ``share_of_ceiling = ceiling_ms / measured_ms`` says how close
the kernel comes to it (1.0: as efficient per pair as dense SDPA). Every mode is
also checked against the float32 masked reference (``zipvl.testing``).

    python -m benchmarks.bench_kernels --threads 2          # 2K, 4K, 8K x kept 0.5 / 0.7
    python -m benchmarks.bench_kernels --threads 2 --quick  # 2K, kept 0.5, one repetition
    python -m benchmarks.bench_kernels --chunks 64 128 256 512   # tune the split chunk
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import add_threads_option, apply_threads, log, write_result
from benchmarks.instrument import attention_pairs, dense_pairs
from zipvl import sparse_attention
from zipvl.sparse_attention import (
    _kept_keys_with_band_attention_fused_mask,
    _kept_keys_with_band_attention_split,
    dense_causal_attention,
    sparse_prefill_attention,
)

FULL_LENGTHS = (2048, 4096, 8192)
QUICK_LENGTHS = (2048,)
FULL_RATIOS = (0.5, 0.7)
QUICK_RATIOS = (0.5,)
LOCAL_WINDOW = 128
MODES = ("qkv", "kv", "kv_local", "kept_dense", "kept_dense_local")
# SmolLM2-135M-Instruct attention (benchmarks/README.md, "What they run on").
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64
KEEP_LAST = 64
REFERENCE_ROWS = 256
MAX_ABS_DIFF = 1e-4  # float32 kernels against the float64 reference


def random_kept(num_kv_heads: int, num_tokens: int, ratio: float, keep_last: int,
                generator: torch.Generator) -> torch.Tensor:
    """Sorted kept positions ``[Hk, p]``: the last ``keep_last`` plus random others."""
    num_kept = max(min(num_tokens, keep_last), round(ratio * num_tokens))
    num_last = min(keep_last, num_tokens)
    rows = []
    for _ in range(num_kv_heads):
        drawn = torch.randperm(num_tokens - num_last, generator=generator)[:num_kept - num_last]
        rows.append(torch.sort(torch.cat([drawn, torch.arange(num_tokens - num_last,
                                                              num_tokens)])).values)
    return torch.stack(rows)


def kernels(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept: torch.Tensor,
            window: int, scale: float, chunks: list[int]) -> dict[str, Callable[[], torch.Tensor]]:
    """The variants of one cell, by name: dense, each mode, and the kv_local alternatives."""
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "dense": lambda: dense_causal_attention(query, key, value, scale)}
    for mode in MODES:
        variants[mode] = (lambda mode=mode: sparse_prefill_attention(
            query, key, value, kept, mode, window, scale))
    variants["kv_local fused-mask (old)"] = lambda: _kept_keys_with_band_attention_fused_mask(
        query, key, value, kept, window, scale)
    for chunk in chunks:
        variants[f"kv_local split chunk={chunk}"] = (
            lambda chunk=chunk: _kept_keys_with_band_attention_split(
                query, key, value, kept, window, scale, query_chunk=chunk))
    return variants


def allowed_keys(kept_row: torch.Tensor, rows: torch.Tensor, num_tokens: int, mode: str,
                 window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[len(rows), n]``: the keys each query row of ``mode`` may read, and which rows output."""
    query_position, key_position = rows[:, None], torch.arange(num_tokens)[None, :]
    causal = key_position <= query_position
    in_kept = torch.zeros(num_tokens, dtype=torch.bool)
    in_kept[kept_row] = True
    outputs = torch.ones(rows.numel(), dtype=torch.bool)
    band_width = 1 if mode == "kv" else window
    band = causal & (query_position - key_position < band_width)
    kept_before_band = in_kept[None, :] & (key_position <= query_position - band_width)
    if mode == "dense":
        allowed = causal
    elif mode == "qkv":
        allowed = causal & in_kept[None, :] & in_kept[rows][:, None]
        outputs = in_kept[rows]
    elif mode in ("kv", "kv_local"):
        allowed = band | kept_before_band
    else:
        dropped = band if mode == "kept_dense_local" else band | kept_before_band
        allowed = torch.where(in_kept[rows][:, None], causal, dropped)
    return allowed, outputs


def reference_rows(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   kept: torch.Tensor, mode: str, window: int, scale: float,
                   rows: torch.Tensor) -> torch.Tensor:
    """Float64 masked attention of ``mode`` at query ``rows`` only: ``[H, len(rows), d]``."""
    group = query.shape[0] // key.shape[0]
    output = torch.zeros((query.shape[0], rows.numel(), query.shape[-1]), dtype=torch.float64)
    for head in range(query.shape[0]):
        kv_head = head // group
        allowed, outputs = allowed_keys(kept[kv_head], rows, key.shape[1], mode, window)
        logits = query[head, rows].double() @ key[kv_head].double().T * scale
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        output[head] = torch.where(outputs[:, None], probs @ value[kv_head].double(), 0.0)
    return output


def mode_of(variant: str) -> str:
    """The prefill mode whose pairs a variant computes."""
    return "kv_local" if variant.startswith("kv_local") else variant


def time_cell(variants: dict[str, Callable[[], torch.Tensor]],
              repeats: int) -> dict[str, dict[str, float | list[float]]]:
    """Milliseconds per variant: every repetition runs every variant once, in turn."""
    for run in variants.values():
        run()  # warm-up: allocator, thread pool, first-call dispatch
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": statistics.median(times), "min_ms": min(times),
                   "max_ms": max(times), "ms": times} for name, times in samples.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2K tokens, kept 0.5, one repetition")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--ratios", type=float, nargs="+", default=None,
                        help="kept ratios (default 0.5 0.7)")
    parser.add_argument("--local-window", type=int, default=LOCAL_WINDOW,
                        help="the band w of kv_local and the kept_dense modes")
    parser.add_argument("--chunks", type=int, nargs="+", default=None,
                        help="query chunk sizes of the split kernel (default: the module's)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per variant (default 3; quick 1)")
    add_threads_option(parser)
    return parser.parse_args()


@torch.inference_mode()
def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    ratios = tuple(args.ratios or (QUICK_RATIOS if args.quick else FULL_RATIOS))
    chunks = list(args.chunks or [sparse_attention._SPLIT_QUERY_CHUNK])
    repeats = args.repeats or (1 if args.quick else 3)
    scale = HEAD_DIM ** -0.5
    settings = {"shape": {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS,
                          "head_dim": HEAD_DIM, "dtype": "float32", "device": "cpu"},
                "lengths": list(lengths), "kept_ratios": list(ratios),
                "local_window": args.local_window, "modes": list(MODES),
                "split_chunks": chunks, "repeats": repeats,
                "keep_last": KEEP_LAST,
                "timing": "one warm-up call per variant, then `repeats` repetitions with the "
                          "variants interleaved; median and min in ms",
                "ceiling": "dense median ms x pairs(mode) / pairs(dense): the mode's time at "
                           "dense SDPA's measured rate per (query, key) pair"}
    log(f"{torch.get_num_threads()} torch threads, {repeats} repetitions")
    cells = []
    generator = torch.Generator().manual_seed(0)
    for num_tokens in lengths:
        query = torch.randn(NUM_HEADS, num_tokens, HEAD_DIM, generator=generator)
        key = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
        value = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
        for ratio in ratios:
            kept = random_kept(NUM_KV_HEADS, num_tokens, ratio, KEEP_LAST, generator)
            window = args.local_window
            variants = kernels(query, key, value, kept, window, scale, chunks)
            # Every variant must match its mode's float64 masked reference (on sampled rows:
            # the full n x n reference does not fit at 8K).
            rows = torch.unique(torch.cat([torch.randint(0, num_tokens, (REFERENCE_ROWS,),
                                                         generator=generator),
                                           torch.arange(num_tokens - 8, num_tokens)]))
            max_abs_diff = {}
            for name, run in variants.items():
                reference = reference_rows(query, key, value, kept, mode_of(name), window, scale,
                                           rows)
                max_abs_diff[name] = float((run()[:, rows].double() - reference).abs().max())
            if max(max_abs_diff.values()) > MAX_ABS_DIFF:
                raise SystemExit(f"a kernel disagrees with its reference: {max_abs_diff}")
            timings = time_cell(variants, repeats)
            dense_ms = timings["dense"]["median_ms"]
            total_dense_pairs = dense_pairs(num_tokens)
            for name, timing in timings.items():
                pairs = attention_pairs(mode_of(name), kept, num_tokens, window)
                ceiling_ms = dense_ms * pairs / total_dense_pairs
                timing.update({"pairs": pairs, "pairs_vs_dense": pairs / total_dense_pairs,
                               "speedup_vs_dense": dense_ms / timing["median_ms"],
                               "ceiling_speedup_vs_dense": total_dense_pairs / pairs,
                               "ceiling_ms": ceiling_ms,
                               "share_of_ceiling": ceiling_ms / timing["median_ms"],
                               "max_abs_diff_vs_reference": max_abs_diff[name]})
            cells.append({"num_tokens": num_tokens, "kept_ratio": ratio, "window": window,
                          "num_kept": kept.shape[1],
                          # Shared machine: the load beside each cell says how noisy it is.
                          "load_average": list(os.getloadavg()), "timings": timings})
            summary = ", ".join(f"{name} {t['median_ms']:.0f} ({100 * t['share_of_ceiling']:.0f}%)"
                                for name, t in timings.items())
            log(f"n={num_tokens} kept={ratio}: {summary} ms (share of ceiling); max |diff| "
                f"{max(max_abs_diff.values()):.1e}")
    path = write_result("kernels", args.quick, settings, {"cells": cells}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
