"""Benchmark 1, prefill: time to first token, dense SDPA against ZipVL.

SmolLM2-135M-Instruct (float32, CPU) reads ``n`` tokens of the King James Bible
(``corpus.long_text_ids``) and produces its first token (prefill with the LM
head on the last position only, then argmax). Variants: the unpatched model
with SDPA (dense), and ZipVL at ``tau`` 0.975 and 0.96 with every prefill mode.
All variants run interleaved in one process, repetition by repetition, so slow phases of a shared machine hit them alike; the median is
reported.

Per variant and length: time to first token; the split of that time into
ZipVL's selection (probes, probe attention, budget, importance, top-k; the
paper's Table E overhead), the attention kernel, cache compression, the rest of
the attention function, and the rest of the model (``instrument.py``); the kept
ratio per layer; and the FLOPs the variant must do (linear layers, attention
pairs from the actual kept positions, probes), set against this machine's
measured float32 matmul peak to give a floor time.

    python -m benchmarks.bench_prefill            # 1K, 2K, 4K, 8K
    python -m benchmarks.bench_prefill --quick    # 1K, 2K, one repetition
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks import peers
from benchmarks.common import add_threads_option, apply_threads, log, write_result
from benchmarks.corpus import long_text_ids
from benchmarks.instrument import (
    Shape,
    attention_pairs,
    instrumented,
    measured_matmul_gflops,
    probe_pairs,
)
from benchmarks.smollm2 import load_smollm2

FULL_LENGTHS = (1024, 2048, 4096, 8192)
QUICK_LENGTHS = (1024, 2048)
TAUS = (0.975, 0.96)
MODES: dict[str, dict] = {
    "qkv": {"prefill": "qkv"},
    "kv": {"prefill": "kv"},
    "kv_local128": {"prefill": "kv_local", "local_window": 128},
    "dense": {"prefill": "dense"},
}


def variants(taus: tuple[float, ...], modes: tuple[str, ...]) -> list[peers.Method]:
    methods = [peers.DENSE]
    for tau in taus:
        for mode in modes:
            methods.append(peers.zipvl_method(f"zipvl {mode} tau={tau}", tau=tau, **MODES[mode]))
    return methods


@torch.inference_mode()
def first_token(model, input_ids: torch.Tensor) -> tuple[int, float, float]:
    """The first token, wall seconds, and process CPU seconds of the prefill."""
    start, cpu_start = time.perf_counter(), time.process_time()
    output = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = int(output.logits[0, -1].argmax())
    return token, time.perf_counter() - start, time.process_time() - cpu_start


def flops_of(method: peers.Method, shape: Shape, num_tokens: int,
             kept: dict[int, torch.Tensor]) -> dict[str, float]:
    """FLOPs the variant must do: linear layers, attention pairs, probes, LM head."""
    config = method.config
    attention = 0
    probes = 0
    for layer in range(shape.num_layers):
        if config is None or config.prefill == "dense" or layer in config.dense_layers:
            pairs = attention_pairs("dense", None, num_tokens, 1)
        else:
            pairs = attention_pairs(config.prefill, kept.get(layer), num_tokens,
                                    config.local_window)
        attention += pairs * shape.pair_flops() * shape.num_heads
        if config is not None and config.tau < 1.0 and layer not in config.dense_layers:
            num_probes = min(num_tokens, config.num_recent_probes + config.num_random_probes)
            probes += probe_pairs(num_tokens, num_probes) * shape.pair_flops() * shape.num_heads
    linear = shape.linear_flops_per_token() * num_tokens
    return {"linear": float(linear), "attention": float(attention), "probes": float(probes),
            "lm_head": float(shape.lm_head_flops(1)),
            "total": float(linear + attention + probes + shape.lm_head_flops(1))}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1K and 2K tokens, one repetition")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per variant (default 3, 1 at 8K; quick 1)")
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=sorted(MODES))
    add_threads_option(parser)
    return parser.parse_args()


def repeats_for(length: int, requested: int | None, quick: bool) -> int:
    if requested is not None:
        return requested
    if quick:
        return 1
    return 3 if length <= 2048 else 2 if length <= 4096 else 1


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    methods = variants(tuple(args.taus), tuple(args.modes))
    model, tokenizer = load_smollm2()
    shape = Shape.of(model.config)
    peak = measured_matmul_gflops()
    log(f"matmul peak {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    settings = {"model": "SmolLM2-135M-Instruct float32", "lengths": list(lengths),
                "taus": list(args.taus), "modes": {m: MODES[m] for m in args.modes},
                "text": "King James Bible from Genesis 1 (corpus.long_text_ids)",
                "timing": "median over repetitions after one 512-token warm-up per variant; "
                          "variants interleaved per repetition",
                "matmul_peak_gflops": peak}
    results = []
    warm_up_ids = long_text_ids(tokenizer, 512)[None]
    for method in methods:
        with peers.applied(model, method):
            first_token(model, warm_up_ids)
    for length in lengths:
        input_ids = long_text_ids(tokenizer, length)[None]
        repeats = repeats_for(length, args.repeats, args.quick)
        samples: dict[str, list[dict]] = {m.name: [] for m in methods}
        first_tokens: dict[str, int] = {}
        for _ in range(repeats):
            for method in methods:
                kept: dict[int, torch.Tensor] = {}
                with peers.applied(model, method, kept=kept), instrumented() as timings:
                    token, seconds, cpu_seconds = first_token(model, input_ids)
                    stats = peers.prefill_stats(model)
                    kept_ratio = stats.kept_ratio[:, 0] if stats is not None else None
                first_tokens[method.name] = token
                samples[method.name].append({
                    "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": dict(timings.seconds),
                    "kept_ratio": kept_ratio, "kept": kept})
        dense_median = statistics.median(s["seconds"] for s in samples[peers.DENSE.name])
        for method in methods:
            runs = samples[method.name]
            median = statistics.median(r["seconds"] for r in runs)
            steps = {key: statistics.median(r["steps"].get(key, 0.0) for r in runs)
                     for key in sorted({k for r in runs for k in r["steps"]})}
            selection = steps.get("select_total", 0.0)
            kernel = steps.get("attention_kernel", 0.0)
            compress = steps.get("compress", 0.0)
            attention_function = steps.get("attention_function", 0.0)
            if method.config is None:
                # SDPA is the whole attention function of the dense model.
                kernel = attention_function
            flops = flops_of(method, shape, length, runs[-1]["kept"])
            kept_ratio = runs[-1]["kept_ratio"]
            row = {
                "length": length, "method": method.describe(), "repeats": len(runs),
                "ttft_seconds": median, "ttft_all": [r["seconds"] for r in runs],
                # Process CPU time: less sensitive than wall time to other work on the machine
                # (with one thread it is the compute time; with more it includes spin-waits).
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                "speedup_vs_dense": dense_median / median,
                "first_token_matches_dense": first_tokens[method.name]
                == first_tokens[peers.DENSE.name],
                "split_seconds": {
                    "selection_total": selection,
                    **{group: steps.get(group, 0.0) for group in
                       ("probes", "probe_attention", "budget", "importance", "selection")},
                    "attention_kernel": kernel,
                    "compress": compress,
                    "attention_glue": max(0.0, attention_function - selection - kernel - compress),
                    "rest_of_model": max(0.0, median - attention_function),
                },
                "kept_ratio_per_layer": kept_ratio,
                "kept_ratio_mean": float(np.mean(kept_ratio)) if kept_ratio is not None else 1.0,
                "flops": flops,
                "floor_seconds": flops["total"] / (peak * 1e9),
                "achieved_gflops": flops["total"] / median / 1e9,
            }
            results.append(row)
            log(f"{length:>5} {method.name:<26} TTFT {median:7.2f} s  x{row['speedup_vs_dense']:.2f}"
                f"  select {selection:6.2f} s  attn {kernel:6.2f} s  kept "
                f"{row['kept_ratio_mean']:.3f}  GFLOP {flops['total'] / 1e9:8.1f}")
    path = write_result("prefill", args.quick, settings, {"runs": results}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
