"""Benchmark 2, decoding: output tokens/s and KV-cache bytes, dense against ZipVL.

SmolLM2-135M-Instruct (float32, CPU), through stock ``model.generate`` (greedy), the
path the pipeline runs. Each batch is **ragged**: ``B`` different King James Bible
passages whose lengths spread evenly from 3/4 of the context to the full context,
left-padded, so the padded path of every method is what is timed.

Timing: a logits processor stamps the clock each time ``generate`` hands it logits.
The first stamp closes the prefill; each later gap is one decoding step of the whole
batch (forward, greedy pick, cache update). The first ``WARM_UP_STEPS`` steps are a
warm-up; tokens/s = ``B x timed steps / their seconds``.

Methods, run **interleaved** (every method once per repetition, the order rotated
each repetition), each cell ``--repeats`` times (median and spread reported):

* ``dense``: the unpatched model, SDPA and transformers' ``DynamicCache``: stock.
* ``zipvl tau=1.0``: ZipVL's own ragged cache and decoding kernel with nothing
  dropped. Greedy tokens must equal dense's, or the run exits non-zero: it is the
  check that the cache and kernel are exact. It is also the *fair* baseline: the
  same implementation without compression, so ``speed-up vs tau=1.0`` isolates what
  compression buys, and ``vs dense`` adds what the implementation buys.
* ``zipvl default``: ``zipvl.ZipVLConfig()``, the project default.
* ``zipvl fast``: the ``fast`` preset (``configs/zipvl/fast.yaml``).
* ``zipvl tau 0.975``: the default at the previous default's tau, a smaller cache.

KV-cache bytes per sample come from ``zipvl.stats().cache_bytes`` (dense: prompt
tokens x ``2 x Hk x d x 4 B x layers``); the largest batch that fits ``--budget-gib``
is computed from them at ``n + --output-tokens`` tokens per sample.

Ceilings: one decoding step reads every weight once for the whole batch and every
cached K/V byte once, and computes the linear layers, the LM head and one (query, key)
pair per cached token and query head. ``byte_ceiling`` and ``flop_ceiling`` are the
uncompressed step's bytes (FLOPs) over the method's, counted at the cache's mid-decode
size (prompt cache plus half the new tokens): the speed-up over ``tau=1.0`` that a step
bound by memory traffic (by arithmetic) could reach with this kept ratio.
``share_of_byte_ceiling`` is the measured speed-up over ``tau=1.0`` against it.

    python -m benchmarks.bench_decode            # 2K x batch 1 and 8, 4K x batch 8
    python -m benchmarks.bench_decode --quick    # 512 x batch 2, 2 repetitions
    python -m benchmarks.bench_decode --cells 2048x8   # one cell
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

import zipvl
from benchmarks import peers
from benchmarks.common import (
    add_threads_option,
    apply_threads,
    log,
    median_and_spread,
    write_result,
)
from benchmarks.corpus import long_text_ids
from benchmarks.instrument import Shape
from benchmarks.smollm2 import load_smollm2
from pipeline.presets import load_zipvl_preset

GIB = 1024 ** 3
FULL_CELLS = ((2048, 1), (2048, 8), (4096, 8))
QUICK_CELLS = ((512, 2),)
WARM_UP_STEPS = 2
PASSAGE_STRIDE = 9000  # tokens between the starts of a batch's passages: no shared text


class StepClock(LogitsProcessor):
    """Leaves the scores alone; records when each step's logits arrive."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        return scores


def methods() -> list[peers.Method]:
    fast = zipvl.ZipVLConfig.from_dict(load_zipvl_preset("fast"))
    return [
        peers.DENSE,
        peers.zipvl_method("zipvl tau=1.0 (no compression)", tau=1.0, prefill="dense"),
        peers.Method("zipvl default", "zipvl", zipvl.ZipVLConfig()),
        peers.Method("zipvl fast", "zipvl", fast),
        # The previous default's budget: what the default gave up in decoding for answers.
        peers.Method("zipvl tau 0.975", "zipvl", zipvl.ZipVLConfig(tau=0.975)),
    ]


def ragged_lengths(context: int, batch: int) -> list[int]:
    """A ragged batch's prompt lengths: spread evenly from ``3/4 context`` to ``context``."""
    if batch == 1:
        return [context]
    shortest = (3 * context) // 4
    return [shortest + (context - shortest) * i // (batch - 1) for i in range(batch)]


def ragged_batch(tokenizer, context: int, batch: int) -> dict[str, torch.Tensor]:
    """``batch`` different passages, lengths from ``3/4 context`` to ``context``, left-padded."""
    lengths = ragged_lengths(context, batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((batch, context), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch, context), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, context - length:] = long_text_ids(tokenizer, length, row * PASSAGE_STRIDE)
        attention_mask[row, context - length:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.inference_mode()
def generate_timed(model, inputs: dict[str, torch.Tensor], new_tokens: int, pad_id: int) -> dict:
    clock = StepClock()
    cache = zipvl.cache_kwargs(model)
    start = time.perf_counter()
    sequences = model.generate(**inputs, **cache, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                               logits_processor=LogitsProcessorList([clock]))
    batch = inputs["input_ids"].shape[0]
    steps = [later - earlier for earlier, later in zip(clock.stamps, clock.stamps[1:])]
    timed = steps[WARM_UP_STEPS:]
    return {"prefill_seconds": clock.stamps[0] - start,
            "tokens_per_second": batch * len(timed) / sum(timed),
            "seconds_per_step": sum(timed) / len(timed), "step_seconds": steps,
            "tokens": sequences[:, inputs["input_ids"].shape[1]:].tolist()}


def step_cost(shape: Shape, weight_bytes: int, cache_bytes: float, batch: int,
              dense_bytes_per_token: int) -> dict[str, float]:
    """Bytes read and FLOPs of one decoding step of the whole batch (see the docstring)."""
    cached_tokens = cache_bytes / dense_bytes_per_token  # summed over the batch, all layers' mean
    flops = (batch * (shape.linear_flops_per_token() + shape.lm_head_flops())
             + shape.pair_flops() * shape.num_heads * shape.num_layers * cached_tokens)
    return {"bytes": weight_bytes + cache_bytes, "flops": flops}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 tokens x batch 2, 2 repetitions")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="generated tokens per run (default 34: 2 warm-up + 31 timed steps)")
    parser.add_argument("--budget-gib", type=float, default=8.0,
                        help="KV-cache memory budget for the largest-batch figure")
    parser.add_argument("--output-tokens", type=int, default=256,
                        help="output tokens assumed per sample in the largest-batch figure")
    parser.add_argument("--cells", nargs="+", default=None, metavar="CONTEXTxBATCH",
                        help="cells to run, e.g. 2048x8 (default: 2048x1 2048x8 4096x8)")
    add_threads_option(parser)
    return parser.parse_args()


def parse_cell(text: str) -> tuple[int, int]:
    context, _, batch = text.partition("x")
    if not (context.isdigit() and batch.isdigit()):
        raise SystemExit(f"--cells takes CONTEXTxBATCH, e.g. 2048x8; got {text!r}")
    return int(context), int(batch)


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    cells = (tuple(parse_cell(cell) for cell in args.cells) if args.cells
             else QUICK_CELLS if args.quick else FULL_CELLS)
    repeats = args.repeats or (2 if args.quick else 3)
    new_tokens = args.new_tokens or (12 if args.quick else 34)
    model, tokenizer = load_smollm2()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shape = Shape.of(model.config)
    dense_bytes_per_token = 2 * shape.num_kv_heads * shape.head_dim * 4 * shape.num_layers
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    runs_by_method = methods()
    settings = {"model": "SmolLM2-135M-Instruct float32", "cells": [list(c) for c in cells],
                "repeats": repeats, "new_tokens": new_tokens, "warm_up_steps": WARM_UP_STEPS,
                "batch_construction": "ragged: different passages, lengths 3/4 n .. n, left-padded",
                "methods": [m.describe() for m in runs_by_method],
                "budget_gib": args.budget_gib, "output_tokens_for_budget": args.output_tokens,
                "dense_cache_bytes_per_token": dense_bytes_per_token, "weight_bytes": weight_bytes}
    cells_out, failures = [], []
    for context, batch in cells:
        inputs = ragged_batch(tokenizer, context, batch)
        prompt_tokens = int(inputs["attention_mask"].sum())
        results: dict[str, list[dict]] = {m.name: [] for m in runs_by_method}
        for repeat in range(repeats):
            shift = repeat % len(runs_by_method)
            for method in runs_by_method[shift:] + runs_by_method[:shift]:
                with peers.applied(model, method):
                    run = generate_timed(model, inputs, new_tokens, pad_id)
                    stats = peers.prefill_stats(model)
                run["cache_bytes"] = stats.cache_bytes if stats else dense_bytes_per_token * prompt_tokens
                run["kept_ratio"] = float(stats.mean_kept_ratio.mean()) if stats else 1.0
                results[method.name].append(run)
                log(f"{context:>5} x {batch} #{repeat} {method.name:<32} "
                    f"{run['tokens_per_second']:7.1f} tokens/s  kept {run['kept_ratio']:.3f}")
                gc.collect()
        dense_tokens = results["dense"][0]["tokens"]
        exact = all(run["tokens"] == dense_tokens for run in results[runs_by_method[1].name])
        if not exact:
            failures.append(f"{context} x {batch}: zipvl tau=1.0 generated other tokens than dense")
        cell = {"context": context, "batch": batch, "prompt_tokens": prompt_tokens,
                "tau_1_tokens_equal_dense": exact, "methods": []}
        medians = {name: statistics.median(r["tokens_per_second"] for r in runs)
                   for name, runs in results.items()}
        decoded_bytes = dense_bytes_per_token * batch * new_tokens / 2
        uncompressed_cost = step_cost(shape, weight_bytes, dense_bytes_per_token * prompt_tokens
                                      + decoded_bytes, batch, dense_bytes_per_token)
        for method in runs_by_method:
            runs = results[method.name]
            per_sample = runs[0]["cache_bytes"] / batch
            final_bytes = per_sample + dense_bytes_per_token * args.output_tokens
            cost = step_cost(shape, weight_bytes, runs[0]["cache_bytes"] + decoded_bytes, batch,
                             dense_bytes_per_token)
            byte_ceiling = uncompressed_cost["bytes"] / cost["bytes"]
            flop_ceiling = uncompressed_cost["flops"] / cost["flops"]
            speedup_vs_uncompressed = medians[method.name] / medians[runs_by_method[1].name]
            cell["methods"].append({
                "method": method.describe(), "kept_ratio": runs[0]["kept_ratio"],
                "tokens_per_second": median_and_spread([r["tokens_per_second"] for r in runs]),
                "prefill_seconds": median_and_spread([r["prefill_seconds"] for r in runs]),
                "speedup_vs_uncompressed": speedup_vs_uncompressed,
                "speedup_vs_dense": medians[method.name] / medians["dense"],
                "step_bytes": cost["bytes"], "step_flops": cost["flops"],
                "byte_ceiling": byte_ceiling,
                "flop_ceiling": flop_ceiling,
                "share_of_byte_ceiling": speedup_vs_uncompressed / byte_ceiling,
                "cache_bytes_per_sample": per_sample,
                "max_batch_in_budget": int(args.budget_gib * GIB // final_bytes),
                "tokens_equal_dense": [r["tokens"] == dense_tokens for r in runs],
                "step_seconds": [r["step_seconds"] for r in runs]})
            log(f"{context:>5} x {batch} {method.name:<32} median {medians[method.name]:7.1f} "
                f"tokens/s  vs tau=1.0 {speedup_vs_uncompressed:.3f}x  "
                f"vs dense {cell['methods'][-1]['speedup_vs_dense']:.3f}x  "
                f"ceilings bytes {byte_ceiling:.3f}x flops {flop_ceiling:.3f}x")
        cells_out.append(cell)
    path = write_result("decode", args.quick, settings,
                        {"cells": cells_out, "failures": failures}, started)
    log(f"wrote {path}")
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
