"""Benchmark: what ZipVL's selection (probes, probe attention, budget, scores, top-p) costs
in the time to first token at 8K tokens, step by step (the paper's Table E).

    python -m benchmarks.bench_selection              # 8K, dense + default + fast, 3 repeats
    python -m benchmarks.bench_selection --quick      # 1K, 1 repeat

SmolLM2-135M on the King James Bible text of the frontier (``bench_frontier``'s speed
phase, whose TTFT and FLOP ceilings stay the reference for speed); this one only breaks
the selection down, from the ``torch.profiler`` ranges the library opens
(``benchmarks.instrument``). Dense and the configurations are interleaved per repeat;
each configuration's first token is recorded beside dense's. Issue 13's target: the
selection at most 3% of TTFT at 8K. Results: ``benchmarks/results/selection-<stamp>.json`` and ``selection-latest.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import peers
from benchmarks.bench_frontier import ALL_CONFIGS, timed_first_tokens, warm_up
from benchmarks.common import add_threads_option, apply_threads, log, write_result
from benchmarks.corpus import long_text_ids
from benchmarks.smollm2 import load_smollm2

CONFIG_NAMES = ("dense prefill, window", "kv_local, window, tau 0.95")  # default, fast
STEPS = ("select_total", "probes", "probe_attention", "budget", "importance", "selection")
MAX_SELECTION_SHARE = 0.03


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    started = time.perf_counter()
    length, repeats = (1024, 1) if args.quick else (args.length, args.repeats)
    model, tokenizer = load_smollm2()
    methods = [("dense", peers.DENSE)] + [(name, peers.zipvl_method(name, **ALL_CONFIGS[name]))
                                          for name in CONFIG_NAMES]
    warm_up(model, tokenizer, methods)
    samples = timed_first_tokens(model, methods, long_text_ids(tokenizer, length)[None], repeats)
    cells = []
    for name, _ in methods[1:]:
        runs = samples[name]
        shares = [run["timings"].get("select_total", 0.0) / run["seconds"] for run in runs]
        cells.append({
            "config_name": name, "config": ALL_CONFIGS[name], "length": length,
            "ttft_seconds": statistics.median(run["seconds"] for run in runs),
            "ttft_all": [run["seconds"] for run in runs],
            "dense_ttft_seconds": statistics.median(run["seconds"] for run in samples["dense"]),
            "selection_share_of_ttft": statistics.median(shares),
            "selection_share_all": shares,
            "step_seconds": {step: statistics.median(run["timings"].get(step, 0.0) for run in runs)
                             for step in STEPS},
            "meets_target": statistics.median(shares) <= MAX_SELECTION_SHARE,
            "first_token_matches_dense": runs[-1]["token"] == samples["dense"][-1]["token"],
        })
        log(f"{name}: selection {100 * cells[-1]['selection_share_of_ttft']:.2f}% of TTFT "
            f"(runs {', '.join(f'{100 * share:.2f}%' for share in shares)})")
    settings = {"length": length, "repeats": repeats, "configs": list(CONFIG_NAMES),
                "text": "King James Bible from Genesis 1 (corpus.long_text_ids)",
                "timing": "one 512-token warm-up per variant, then dense and the configurations "
                          "interleaved per repetition; medians; CPU time of the profiler ranges",
                "target": f"selection <= {MAX_SELECTION_SHARE:.0%} of TTFT"}
    path = write_result("selection", args.quick, settings, {"cells": cells}, started)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
