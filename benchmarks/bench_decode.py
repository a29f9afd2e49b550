"""Benchmark 2, decoding: output tokens/s and KV-cache bytes, dense against ZipVL.

SmolLM2-135M-Instruct (float32, CPU). For each context length the prompt (King
James Bible text) is prefilled once per method at batch 1; the resulting cache
is copied and repeated to batch ``B`` (``Cache.batch_repeat_interleave``, which
both caches implement), so every batch size decodes from the same prefill and
the prefill cost of 32 long prompts is not paid on 2 cores. Then ``steps``
greedy tokens are decoded for the whole batch; the first two steps are a
warm-up, the rest are timed: tokens/s = ``B x timed steps / seconds``.

Methods: dense (the unpatched model: SDPA and transformers' ``DynamicCache``,
what ``generate`` uses), ZipVL with ``tau = 1.0`` (its own ragged cache and
decoding kernel, nothing dropped: separates the cache implementation from the
compression), and ZipVL at tau 0.975 / 0.96 with the default prefill mode. All
run side by side in one process.

KV-cache bytes per sample: dense ``n x 2 x Hk x d x 4 B x layers``; ZipVL
``zipvl.stats().cache_bytes`` after prefill. The largest batch that fits a fixed
KV-cache budget (``--budget-gib``, default 8 GiB) is computed from the bytes per
sample at ``n + --output-tokens`` tokens; a run whose own cache would exceed
``--max-cache-gib`` (default 7 GiB) is not run and is recorded as skipped, so at
8K x 32 ZipVL may run where dense cannot.

    python -m benchmarks.bench_decode            # 2K/4K/8K x batch 1/8/32
    python -m benchmarks.bench_decode --quick    # 2K x batch 1/8
"""

from __future__ import annotations

import argparse
import copy
import gc
import time

import torch

import zipvl
from benchmarks import peers
from benchmarks.common import add_threads_option, apply_threads, log, write_result
from benchmarks.corpus import long_text_ids
from benchmarks.instrument import Shape
from benchmarks.smollm2 import load_smollm2

GIB = 1024 ** 3
FULL_CONTEXTS = (2048, 4096, 8192)
FULL_BATCHES = (1, 8, 32)
QUICK_CONTEXTS = (2048,)
QUICK_BATCHES = (1, 8)
WARM_UP_STEPS = 2


def methods(default_fields: dict) -> list[peers.Method]:
    return [
        peers.DENSE,
        peers.zipvl_method("zipvl tau=1.0 (no compression)", tau=1.0, prefill="dense"),
        peers.zipvl_method("zipvl tau=0.975", tau=0.975, **default_fields),
        peers.zipvl_method("zipvl tau=0.96", tau=0.96, **default_fields),
    ]


@torch.inference_mode()
def prefill(model, input_ids: torch.Tensor):
    output = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return output.past_key_values, output.logits[:, -1].argmax(-1)


@torch.inference_mode()
def decode(model, cache, first_token: torch.Tensor, batch: int, steps: int) -> dict:
    cache = copy.deepcopy(cache)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    tokens = first_token.repeat(batch)[:, None]
    step_seconds, step_cpu_seconds = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        output = model(input_ids=tokens, use_cache=True, **{zipvl.cache_keyword(model): cache})
        tokens = output.logits[:, -1].argmax(-1, keepdim=True)
        step_seconds.append(time.perf_counter() - start)
        step_cpu_seconds.append(time.process_time() - cpu_start)
    timed = step_seconds[WARM_UP_STEPS:]
    timed_cpu = step_cpu_seconds[WARM_UP_STEPS:]
    allocated = cache.allocated_bytes() if isinstance(cache, zipvl.ZipVLCache) else sum(
        layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    del cache
    gc.collect()
    return {"tokens_per_second": batch * len(timed) / sum(timed),
            "seconds_per_step": sum(timed) / len(timed), "step_seconds": step_seconds,
            # Process CPU time per step: less sensitive than wall time to other work.
            "cpu_seconds_per_step": sum(timed_cpu) / len(timed_cpu),
            "allocated_cache_bytes_after": allocated}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2K context, batch 1 and 8")
    parser.add_argument("--contexts", type=int, nargs="+", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="decoded tokens per run")
    parser.add_argument("--budget-gib", type=float, default=8.0,
                        help="KV-cache memory budget for the largest-batch figure")
    parser.add_argument("--output-tokens", type=int, default=256,
                        help="output tokens assumed per sample in the largest-batch figure")
    parser.add_argument("--max-cache-gib", type=float, default=7.0,
                        help="skip runs whose dense cache would exceed this")
    parser.add_argument("--prefill", default="kv_local", choices=("qkv", "kv", "kv_local", "dense"))
    parser.add_argument("--local-window", type=int, default=128)
    add_threads_option(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    contexts = tuple(args.contexts or (QUICK_CONTEXTS if args.quick else FULL_CONTEXTS))
    batches = tuple(args.batches or (QUICK_BATCHES if args.quick else FULL_BATCHES))
    steps = args.steps or (8 if args.quick else 16)
    default_fields = {"prefill": args.prefill, "local_window": args.local_window}
    model, tokenizer = load_smollm2()
    shape = Shape.of(model.config)
    dense_bytes_per_token = 2 * shape.num_kv_heads * shape.head_dim * 4 * shape.num_layers
    settings = {"model": "SmolLM2-135M-Instruct float32", "contexts": list(contexts),
                "batches": list(batches), "steps": steps, "warm_up_steps": WARM_UP_STEPS,
                "zipvl_fields": default_fields, "budget_gib": args.budget_gib,
                "output_tokens_for_budget": args.output_tokens,
                "max_cache_gib": args.max_cache_gib,
                "batch_construction": "one prefill per method and context, cache repeated "
                                      "to the batch (Cache.batch_repeat_interleave)",
                "dense_cache_bytes_per_token": dense_bytes_per_token}
    runs, capacity = [], []
    for context in contexts:
        input_ids = long_text_ids(tokenizer, context)[None]
        for method in methods(default_fields):
            with peers.applied(model, method):
                prefill_start = time.perf_counter()
                cache, first = prefill(model, input_ids)
                prefill_seconds = time.perf_counter() - prefill_start
                stats = peers.prefill_stats(model)
                if stats is not None:
                    cache_bytes = stats.cache_bytes
                    kept_ratio = float(stats.kept_ratio.mean())
                else:
                    cache_bytes, kept_ratio = dense_bytes_per_token * context, 1.0
                # Per-sample bytes at the end of an answer: kept prompt tokens + outputs.
                final_bytes = cache_bytes + dense_bytes_per_token * args.output_tokens
                max_batch = int(args.budget_gib * GIB // final_bytes)
                capacity.append({"context": context, "method": method.describe(),
                                 "cache_bytes_per_sample": cache_bytes, "kept_ratio": kept_ratio,
                                 "bytes_per_sample_with_outputs": final_bytes,
                                 "max_batch_in_budget": max_batch})
                log(f"{context:>5} {method.name:<32} prefill {prefill_seconds:6.2f} s  kept "
                    f"{kept_ratio:.3f}  cache {cache_bytes / 2**20:7.1f} MiB/sample  max batch "
                    f"in {args.budget_gib:g} GiB: {max_batch}")
                for batch in batches:
                    total = cache_bytes * batch
                    row = {"context": context, "batch": batch, "method": method.describe(),
                           "kept_ratio": kept_ratio, "cache_bytes_per_sample": cache_bytes,
                           "cache_bytes": total}
                    if total > args.max_cache_gib * GIB:
                        # This method's own cache does not fit: what the budget figure predicts.
                        row["skipped"] = (f"cache {total / GIB:.1f} GiB exceeds "
                                          f"--max-cache-gib {args.max_cache_gib}")
                        log(f"      batch {batch:>3}: skipped, {row['skipped']}")
                        runs.append(row)
                        continue
                    row.update(decode(model, cache, first, batch, steps))
                    runs.append(row)
                    log(f"      batch {batch:>3}: {row['tokens_per_second']:8.1f} tokens/s "
                        f"({1000 * row['seconds_per_step']:.0f} ms/step)")
                del cache
                gc.collect()
    for row in runs:
        dense = next((r for r in runs if r["context"] == row["context"]
                      and r["batch"] == row["batch"] and r["method"]["family"] == "dense"
                      and "tokens_per_second" in r), None)
        if dense is not None and "tokens_per_second" in row:
            row["throughput_vs_dense"] = row["tokens_per_second"] / dense["tokens_per_second"]
    path = write_result("decode", args.quick, settings, {"runs": runs, "capacity": capacity},
                        started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
