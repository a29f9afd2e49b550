"""Experiment: ``kv_local`` as one block-sparse FlexAttention call, against the split kernel.

Issue 13 asks whether ``kv_local`` (kept keys plus a causal band of ``w`` keys) runs
faster as a single block-sparse call: torch FlexAttention (Dong et al., "Flex
Attention", arXiv 2412.05496; ``torch.nn.attention.flex_attention``) with a
``BlockMask``, compiled (Inductor's CPU flex kernel skips the blocks the mask
empties; eager flex computes every block, so it is not timed). Two key layouts:

* ``positions``: the keys in their own order, ``mask_mod = causal & (band | kept)``.
  A 128-key block is skipped only if it holds no kept key and no band key, which
  scattered kept keys rarely allow: block sparsity close to causal dense.
* ``compacted``: keys ``[kept keys of the KV head, every
  key]``; the first part is allowed where the kept position is at or before
  ``i - w``, the second on the band. Both parts are block-sparse by construction
  (kept positions are sorted), so the blocks computed approach the exact pairs.

Each is timed as the kernel alone and with the ``BlockMask`` build (a prefill builds
one per layer: the kept set changes per layer), interleaved with the split kernel
(``zipvl.sparse_attention``, the CPU path) and dense causal SDPA, and checked against
the split kernel's output. The faster path per device is what the library keeps.

    python -m benchmarks.bench_flex --threads 2          # 4K, 8K x kept 0.5
    python -m benchmarks.bench_flex --threads 2 --quick  # 2K, one repetition
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from benchmarks.bench_kernels import (
    HEAD_DIM,
    KEEP_LAST,
    NUM_HEADS,
    NUM_KV_HEADS,
    random_kept,
    time_cell,
)
from benchmarks.common import add_threads_option, apply_threads, log, write_result
from zipvl.sparse_attention import _kept_keys_with_band_attention_split, dense_causal_attention

FULL_LENGTHS, QUICK_LENGTHS = (4096, 8192), (2048,)
KEPT_RATIO = 0.5
LOCAL_WINDOW = 128
BLOCK_SIZE = 128
MAX_ABS_DIFF = 1e-4


def positions_mask(kept: torch.Tensor, num_tokens: int, window: int, group: int):
    in_kept = torch.zeros(kept.shape[0], num_tokens, dtype=torch.bool)
    in_kept.scatter_(1, kept, True)

    def mask_mod(batch, head, query_index, key_index):
        causal = key_index <= query_index
        return causal & ((query_index - key_index < window) | in_kept[head // group, key_index])

    return create_block_mask(mask_mod, None, NUM_HEADS, num_tokens, num_tokens, device="cpu",
                             BLOCK_SIZE=BLOCK_SIZE)


def compacted_keys(kept: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[kept keys; every key]`` per KV head (``kept [Hk, p]``: one budget per layer)."""
    index = kept[..., None].expand(-1, -1, key.shape[-1])
    return torch.cat([key.gather(1, index), key], dim=1), torch.cat([value.gather(1, index),
                                                                     value], dim=1)


def compacted_mask(kept: torch.Tensor, num_tokens: int, window: int, group: int):
    longest = kept.shape[1]

    def mask_mod(batch, head, query_index, key_index):
        in_kept_part = key_index < longest
        position = kept[head // group, key_index.clamp(max=longest - 1)]
        kept_ok = in_kept_part & (position <= query_index - window)
        band_key = key_index - longest
        band_ok = (~in_kept_part) & (band_key <= query_index) & (query_index - band_key < window)
        return kept_ok | band_ok

    return create_block_mask(mask_mod, None, NUM_HEADS, num_tokens, longest + num_tokens,
                             device="cpu", BLOCK_SIZE=BLOCK_SIZE)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    add_threads_option(parser)
    return parser.parse_args()


def run_cell(num_tokens: int, repeats: int, compiled: Callable,
             generator: torch.Generator) -> dict:
    """One length: check both flex layouts against the split kernel, then time every variant."""
    scale = HEAD_DIM ** -0.5
    group = NUM_HEADS // NUM_KV_HEADS
    query = torch.randn(NUM_HEADS, num_tokens, HEAD_DIM, generator=generator)
    key = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
    value = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, generator=generator)
    kept = random_kept(NUM_KV_HEADS, num_tokens, KEPT_RATIO, KEEP_LAST, generator)
    keys, values = compacted_keys(kept, key, value)

    def flex_positions(block_mask=None):
        if block_mask is None:
            block_mask = positions_mask(kept, num_tokens, LOCAL_WINDOW, group)
        return compiled(query[None], key[None], value[None], block_mask=block_mask,
                        scale=scale, enable_gqa=True)[0]

    def flex_compacted(block_mask=None):
        if block_mask is None:
            block_mask = compacted_mask(kept, num_tokens, LOCAL_WINDOW, group)
        return compiled(query[None], keys[None], values[None], block_mask=block_mask,
                        scale=scale, enable_gqa=True)[0]

    reference = _kept_keys_with_band_attention_split(query, key, value, kept, LOCAL_WINDOW, scale)
    first_call_seconds, differences = {}, {}
    for name, run in (("positions", flex_positions), ("compacted", flex_compacted)):
        start = time.perf_counter()
        output = run()
        first_call_seconds[name] = time.perf_counter() - start
        differences[name] = float((output - reference).abs().max())
        log(f"{num_tokens} flex {name}: first call {first_call_seconds[name]:.1f} s, "
            f"max diff vs split {differences[name]:.2e}")
        if differences[name] > MAX_ABS_DIFF:
            raise SystemExit(f"flex {name} differs from the split kernel by {differences[name]}")
    position_blocks = positions_mask(kept, num_tokens, LOCAL_WINDOW, group)
    compacted_blocks = compacted_mask(kept, num_tokens, LOCAL_WINDOW, group)
    variants = {
        "dense SDPA": lambda: dense_causal_attention(query, key, value, scale),
        "kv_local split (library, CPU)": lambda: _kept_keys_with_band_attention_split(
            query, key, value, kept, LOCAL_WINDOW, scale),
        "flex positions, kernel": lambda: flex_positions(position_blocks),
        "flex positions, mask + kernel": flex_positions,
        "flex compacted, kernel": lambda: flex_compacted(compacted_blocks),
        "flex compacted, mask + kernel": flex_compacted,
        "block mask build, compacted": lambda: compacted_mask(kept, num_tokens, LOCAL_WINDOW,
                                                              group),
    }
    timings = time_cell(variants, repeats)
    split_ms = timings["kv_local split (library, CPU)"]["median_ms"]
    for name, timing in timings.items():
        timing["speedup_vs_split"] = split_ms / timing["median_ms"]
        log(f"{num_tokens} {name:<32} {timing['median_ms']:8.1f} ms "
            f"(x{timing['speedup_vs_split']:.2f} vs split)")
    return {"num_tokens": num_tokens, "kept_ratio": KEPT_RATIO,
            "first_call_seconds": first_call_seconds, "max_abs_diff_vs_split": differences,
            "block_sparsity_percent": {"positions": position_blocks.sparsity(),
                                       "compacted": compacted_blocks.sparsity()},
            "timings": timings}


@torch.inference_mode()
def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS))
    repeats = args.repeats or (1 if args.quick else 3)
    compiled = torch.compile(flex_attention, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    cells = [run_cell(num_tokens, repeats, compiled, generator) for num_tokens in lengths]
    settings = {"shape": {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS,
                          "head_dim": HEAD_DIM, "dtype": "float32", "device": "cpu"},
                "lengths": list(lengths), "kept_ratio": KEPT_RATIO, "local_window": LOCAL_WINDOW,
                "block_size": BLOCK_SIZE, "repeats": repeats, "threads": torch.get_num_threads(),
                "compile": "torch.compile(flex_attention, dynamic=False), Inductor CPU",
                "timing": "one warm-up per variant after the compiling first call, then the "
                          "variants interleaved per repetition; median ms"}
    path = write_result("flex", args.quick, settings, {"cells": cells}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
