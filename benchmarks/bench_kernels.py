"""Micro-benchmark: one layer's prefill attention kernel, dense SDPA against ZipVL's modes.

Times, side by side in one process, one attention call of SmolLM2-135M's shape
(9 query / 3 KV heads, head dim 64, float32, CPU) at ``n`` tokens: dense causal
SDPA, ``qkv`` (causal attention among the kept tokens), and ``kv_local`` (kept
keys plus a causal band of ``w`` keys; ``w = 1`` is the ``kv`` mode) both as the
old fused-mask kernel (one masked SDPA call per query chunk) and the split CPU
kernel (unmasked kept prefix + masked remainder, merged by log-sum-exp) at one
or several query chunk sizes. Kept positions are random, sorted per KV head,
with the last 64 positions always kept, as ZipVL's selection does (the recent
probes are kept). Variants run interleaved per repetition, so slow phases of a
shared machine hit them alike; the median and the minimum are reported.

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
WINDOWS = (128, 1)
# SmolLM2-135M-Instruct attention (benchmarks/README.md, "What they run on").
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64
KEEP_LAST = 64


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
    """The variants of one cell, by name."""
    mode = "kv" if window == 1 else f"kv_local{window}"
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "dense": lambda: dense_causal_attention(query, key, value, scale),
        "qkv": lambda: sparse_prefill_attention(query, key, value, kept, "qkv", window, scale),
        f"{mode} fused-mask (old)": lambda: _kept_keys_with_band_attention_fused_mask(
            query, key, value, kept, window, scale),
    }
    for chunk in chunks:
        variants[f"{mode} split chunk={chunk}"] = (
            lambda chunk=chunk: _kept_keys_with_band_attention_split(
                query, key, value, kept, window, scale, query_chunk=chunk))
    return variants


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
    return {name: {"median_ms": statistics.median(times), "min_ms": min(times), "ms": times}
            for name, times in samples.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2K tokens, kept 0.5, one repetition")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--ratios", type=float, nargs="+", default=None,
                        help="kept ratios (default 0.5 0.7)")
    parser.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS),
                        help="local windows w (1 is the kv mode)")
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
                "windows": list(args.windows), "split_chunks": chunks, "repeats": repeats,
                "keep_last": KEEP_LAST,
                "timing": "one warm-up call per variant, then `repeats` repetitions with the "
                          "variants interleaved; median and min in ms"}
    log(f"{torch.get_num_threads()} torch threads, {repeats} repetitions")
    cells = []
    generator = torch.Generator().manual_seed(0)
    for num_tokens in lengths:
        query = torch.randn(NUM_HEADS, num_tokens, HEAD_DIM, generator=generator)
        key = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
        value = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
        for ratio in ratios:
            kept = random_kept(NUM_KV_HEADS, num_tokens, ratio, KEEP_LAST, generator)
            for window in args.windows:
                variants = kernels(query, key, value, kept, window, scale, chunks)
                # Same semantics: the split kernel must reproduce the fused-mask one.
                old = next(run for name, run in variants.items() if "fused-mask" in name)()
                max_abs_diff = max(
                    float((run() - old).abs().max()) for name, run in variants.items()
                    if " split " in name)
                timings = time_cell(variants, repeats)
                medians = {name: timing["median_ms"] for name, timing in timings.items()}
                old_median = next(ms for name, ms in medians.items() if "fused-mask" in name)
                speedups = {name: {"vs_dense": medians["dense"] / ms,
                                   "vs_fused_mask": old_median / ms}
                            for name, ms in medians.items() if " split " in name}
                cells.append({"num_tokens": num_tokens, "kept_ratio": ratio, "window": window,
                              "num_kept": kept.shape[1],
                              # Shared machine: the load beside each cell says how noisy it is.
                              "load_average": list(os.getloadavg()),
                              "max_abs_diff_split_vs_fused": max_abs_diff,
                              "timings": timings, "split_speedup_from_medians": speedups})
                summary = ", ".join(f"{name} {timing['median_ms']:.0f}"
                                    for name, timing in timings.items())
                log(f"n={num_tokens} kept={ratio} w={window}: {summary} ms "
                    f"(split vs old max |diff| {max_abs_diff:.1e})")
    path = write_result("kernels", args.quick, settings, {"cells": cells}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
