"""One layer's decoding attention alone, against the bytes it must read (issue 13, item 3).

A decoding step reads every cached K/V byte once, so its attention is bound by memory
bandwidth: the ceiling here is the time this machine takes to stream the same K/V
(``key.sum() + value.sum()``, measured in the same cell), and each kernel's
``share_of_ceiling`` is that time over its own. As in the model, every timing walks
the caches of 30 layers, so the K/V come from memory and not from a cache that one
layer's repeated calls would keep warm (one layer at 2K x 8 is 25 MB, about this
machine's last-level cache). SmolLM2-135M's shape (9 query / 3 KV
heads, head dim 64, float32), one new token per sample on a **ragged** batch (lengths
spread from 3/4 of the context to the full context: ``bench_decode.ragged_lengths``,
the lengths of its ragged batches):

* ``sdpa``: ``F.scaled_dot_product_attention`` with ``enable_gqa`` and the ragged
  boolean mask, the kernel ZipVL decoded with before;
* ``grouped``: ``zipvl.sparse_attention.decode_attention`` on CPU, the query heads of
  each KV head as the rows of one product (``_grouped_decode_attention``).

Variants are interleaved, each cell repeated (median and spread); both are checked
against a float64 reference on the same inputs (exits if any differs by more than 1e-4).

    python -m benchmarks.bench_decode_kernel --threads 2
    python -m benchmarks.bench_decode_kernel --quick
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.bench_decode import ragged_lengths
from benchmarks.common import (
    add_threads_option,
    apply_threads,
    log,
    median_and_spread,
    write_result,
)
from zipvl.sparse_attention import decode_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
FULL_CELLS = ((2048, 8), (4096, 8), (8192, 8), (2048, 1))
QUICK_CELLS = ((512, 2),)
LAYERS = 30  # SmolLM2-135M's
PASSES_PER_TIMING = 3
TOLERANCE = 1e-4


def sdpa_decode(query, key, value, lengths, scale):
    allowed = torch.arange(key.shape[2])[None, :] < lengths[:, None]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None, None],
                                          scale=scale, enable_gqa=True)


def stream_cache(query, key, value, lengths, scale):
    """The ceiling: read the K/V once, compute nothing that matters."""
    return key.sum() + value.sum()


def reference(query, key, value, lengths, scale) -> torch.Tensor:
    group = HEADS // KV_HEADS
    expanded_key = key.double().repeat_interleave(group, dim=1)
    expanded_value = value.double().repeat_interleave(group, dim=1)
    scores = query.double() @ expanded_key.transpose(-1, -2) * scale
    hidden = torch.arange(key.shape[2])[None, :] >= lengths[:, None]
    scores = scores.masked_fill(hidden[:, None, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ expanded_value


KERNELS = {"sdpa": sdpa_decode, "grouped": decode_attention, "stream": stream_cache}


def time_call(kernel, layers: list[tuple]) -> float:
    """Seconds per layer of passes over every layer's cache."""
    start = time.perf_counter()
    for _ in range(PASSES_PER_TIMING):
        for arguments in layers:
            kernel(*arguments)
    return (time.perf_counter() - start) / (PASSES_PER_TIMING * len(layers))


@torch.inference_mode()
def run_cell(context: int, batch: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(context + batch)
    # Capacity past the longest sample, as the growing cache has.
    capacity = context + 16
    lengths = torch.tensor(ragged_lengths(context, batch))
    layers = []
    for _ in range(LAYERS):
        query = torch.randn(batch, HEADS, 1, HEAD_DIM, generator=generator)
        key = torch.randn(batch, KV_HEADS, capacity, HEAD_DIM, generator=generator)
        value = torch.randn(batch, KV_HEADS, capacity, HEAD_DIM, generator=generator)
        layers.append((query, key, value, lengths, HEAD_DIM ** -0.5))
    arguments = layers[0]
    expected = reference(*arguments)
    errors = {name: float((KERNELS[name](*arguments).double() - expected).abs().max())
              for name in ("sdpa", "grouped")}
    if max(errors.values()) > TOLERANCE:
        log(f"kernels differ from the float64 reference: {errors}")
        sys.exit(1)
    for kernel in KERNELS.values():  # warm-up
        kernel(*arguments)
    seconds: dict[str, list[float]] = {name: [] for name in KERNELS}
    names = list(KERNELS)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            seconds[name].append(time_call(KERNELS[name], layers))
    medians = {name: median_and_spread(values) for name, values in seconds.items()}
    key = arguments[1]  # every layer's K and V have this shape
    cache_bytes = 2 * key.numel() * key.element_size()
    stream = medians["stream"]["median"]
    cell = {"context": context, "batch": batch, "kv_bytes": cache_bytes,
            "stream_gb_per_second": cache_bytes / stream / 1e9, "max_abs_error": errors,
            "seconds": medians}
    for name in ("sdpa", "grouped"):
        median = medians[name]["median"]
        cell[name] = {"gb_per_second": cache_bytes / median / 1e9,
                      "share_of_ceiling": stream / median}
    cell["grouped_speedup_over_sdpa"] = medians["sdpa"]["median"] / medians["grouped"]["median"]
    return cell


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    add_threads_option(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    apply_threads(args.threads)
    cells = []
    for context, batch in (QUICK_CELLS if args.quick else FULL_CELLS):
        cell = run_cell(context, batch, 3 if args.quick else args.repeats)
        log(f"{context} x {batch}: sdpa {1e3 * cell['seconds']['sdpa']['median']:.3f} ms "
            f"({cell['sdpa']['share_of_ceiling']:.0%} of ceiling), grouped "
            f"{1e3 * cell['seconds']['grouped']['median']:.3f} ms "
            f"({cell['grouped']['share_of_ceiling']:.0%}), {cell['grouped_speedup_over_sdpa']:.3f}x; "
            f"stream {cell['stream_gb_per_second']:.1f} GB/s")
        cells.append(cell)
    settings = {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "dtype": "float32",
                "threads": torch.get_num_threads(), "layers": LAYERS,
                "passes_per_timing": PASSES_PER_TIMING,
                "repeats": 3 if args.quick else args.repeats}
    path = write_result("decode-kernel", args.quick, settings, {"cells": cells}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
