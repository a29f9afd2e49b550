"""PNG plots of the latest benchmark results (matplotlib, headless).

Reads ``benchmarks/results/<name>-latest.json`` (or ``-quick-latest`` with
``--quick``) for whichever of fidelity / prefill / decode exist and writes:

* ``fidelity_tradeoff.png``: mean kept ratio against NLL increase over dense,
  one line per method over the tau sweep (ZipVL modes; fixed ratio, SnapKV,
  StreamingLLM and kvpress presses at the matched budgets);
* ``fidelity_modes.png``: NLL increase and greedy agreement per prefill mode at tau 0.975
  (modes without answers show 0 agreement);
* ``prefill_ttft.png``: time to first token against prompt length per variant,
  and the time split (selection / attention / rest) at the longest length;
* ``prefill_kept_per_layer.png``: kept ratio per layer;
* ``decode_throughput.png``: tokens/s per batch and context, dense against ZipVL;
* ``video_prefill.png``: long-video time to first token per variant with its FLOP floor,
  the time split at the longest length, and the selection overhead's share of TTFT;
* ``frontier.png``: greedy agreement against the 8K prefill speed-up per configuration
  and peer, with the Pareto front (``bench_frontier``);
* ``resume_scaling.png``: a rerun with 40 rows left against N finished rows: its extra
  seconds over a fresh 40-row job, the bytes it read against the bytes it needs, and
  the driver's peak memory.

    python -m benchmarks.plot [--quick]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import RESULTS_DIR, load_latest  # noqa: E402


def _try_load(name: str, quick: bool) -> dict | None:
    try:
        return load_latest(name, quick)
    except FileNotFoundError:
        return None


def _label(run: dict) -> str:
    family = run["family"]
    if family == "zipvl":
        return f"ZipVL adaptive, {run['mode']}"
    if family == "zipvl-fixed":
        return f"ZipVL fixed ratio, {run['mode']}"
    return {"snapkv": "SnapKV-style (dense prefill)",
            "streaming": "StreamingLLM-style (sink + recent)"}.get(family, family)


def plot_fidelity(result: dict, suffix: str) -> list[str]:
    runs = list(result["figures"]["runs"])
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        lines[_label(run)].append((run["kept_ratio"], 100 * run["nll_increase"]))
    kvpress = result["figures"].get("kvpress", {})
    for run in kvpress.get("runs", []) if kvpress.get("status") == "ok" else []:
        lines[f"kvpress {run['press']}"].append((run["kept_ratio"], 100 * run["nll_increase"]))
    figure, axis = plt.subplots(figsize=(10, 6.5))
    # Many methods: 20 distinct colours so no two lines share one.
    axis.set_prop_cycle(color=list(plt.cm.tab20.colors))
    for label, points in sorted(lines.items()):
        points.sort()
        style = "-o" if label.startswith("ZipVL adaptive") else "--s" if "ZipVL" in label else ":^"
        axis.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=4)
    axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axis.text(axis.get_xlim()[0], 1.05, " 1% budget", color="grey", fontsize=8)
    settings = result["settings"]
    axis.set_xlabel("mean kept ratio of the KV cache (over layers and documents)")
    axis.set_ylabel("NLL increase over dense, % (continuation read through the cache)")
    axis.set_title(f"SmolLM2-135M, {len(settings['documents'])} documents x "
                   f"{settings['context_tokens']} tokens, tau {settings['taus']}")
    axis.set_yscale("symlog", linthresh=1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    tradeoff = RESULTS_DIR / f"fidelity_tradeoff{suffix}.png"
    figure.savefig(tradeoff, dpi=120)
    plt.close(figure)

    tau = result["figures"]["summary"]["tau"]
    adaptive = [r for r in runs if r["tau"] == tau and r["family"] == "zipvl"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["mode"] for r in adaptive]
    left.barh(names, [100 * r["nll_increase"] for r in adaptive], color="tab:blue")
    left.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    left.set_xlabel(f"NLL increase over dense, % (tau {tau})")
    for index, run in enumerate(adaptive):
        left.text(100 * run["nll_increase"], index, f" kept {run['kept_ratio']:.2f}", va="center",
                  fontsize=7)
    if any("agreement" in r for r in adaptive):
        right.barh(names, [r.get("agreement", 0.0) for r in adaptive], color="tab:green")
        right.set_xlabel("greedy token agreement with dense, first 32 tokens")
        right.set_xlim(0, 1)
    figure.tight_layout()
    modes = RESULTS_DIR / f"fidelity_modes{suffix}.png"
    figure.savefig(modes, dpi=120)
    plt.close(figure)
    return [str(tradeoff), str(modes)]


def plot_prefill(result: dict, suffix: str) -> list[str]:
    runs = result["figures"]["runs"]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run["method"]["name"]].append(run)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, rows in by_method.items():
        rows.sort(key=lambda r: r["length"])
        left.plot([r["length"] for r in rows], [r["ttft_seconds"] for r in rows],
                  "-o" if name != "dense" else "-k", label=name, markersize=3)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("prompt tokens")
    left.set_ylabel("time to first token, s")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    longest = max(r["length"] for r in runs)
    rows = [r for r in runs if r["length"] == longest]
    parts = ("selection_total", "attention_kernel", "compress", "attention_glue", "rest_of_model")
    bottoms = [0.0] * len(rows)
    names = [r["method"]["name"] for r in rows]
    for part in parts:
        values = [r["split_seconds"][part] for r in rows]
        right.barh(names, values, left=bottoms, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    right.set_xlabel(f"seconds at {longest} tokens")
    right.legend(fontsize=7)
    figure.tight_layout()
    ttft = RESULTS_DIR / f"prefill_ttft{suffix}.png"
    figure.savefig(ttft, dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for run in rows:
        if run["kept_ratio_per_layer"] is not None:
            axis.plot(run["kept_ratio_per_layer"], label=run["method"]["name"])
    axis.set_xlabel("layer")
    axis.set_ylabel(f"kept ratio at {longest} tokens")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    layers = RESULTS_DIR / f"prefill_kept_per_layer{suffix}.png"
    figure.savefig(layers, dpi=120)
    plt.close(figure)
    return [str(ttft), str(layers)]


def plot_decode(result: dict, suffix: str) -> list[str]:
    """Median tokens/s per (context x batch) cell and method, min-max as error bars."""
    cells = result["figures"]["cells"]
    names = [m["method"]["name"] for m in cells[0]["methods"]]
    figure, axis = plt.subplots(figsize=(2.2 + 1.8 * len(cells), 4.5))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        medians, lows, highs = [], [], []
        for cell in cells:
            figure_of = next(m for m in cell["methods"] if m["method"]["name"] == name)
            speed = figure_of["tokens_per_second"]
            medians.append(speed["median"])
            lows.append(speed["median"] - speed["min"])
            highs.append(speed["max"] - speed["median"])
        positions = [c + (index - (len(names) - 1) / 2) * width for c in range(len(cells))]
        axis.bar(positions, medians, width, yerr=[lows, highs], capsize=2, label=name)
    axis.set_xticks(range(len(cells)),
                    [f"{c['context']} x {c['batch']}" for c in cells])
    axis.set_xlabel("context tokens x batch (ragged)")
    axis.set_ylabel("output tokens/s (median, min-max)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = RESULTS_DIR / f"decode_throughput{suffix}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [str(path)]


def plot_resume(result: dict, suffix: str) -> list[str]:
    cases = result["figures"]["cases"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for image_bytes in sorted({case["image_bytes"] for case in cases}):
        rows = sorted((case for case in cases if case["image_bytes"] == image_bytes),
                      key=lambda case: case["finished_rows"])
        finished = [case["finished_rows"] for case in rows]
        label = f"{image_bytes:,}-byte images"
        axes[0].plot(finished, [case["overhead_seconds"] for case in rows], "-o", label=label)
        axes[1].plot(finished, [case["rerun_bytes_read"] / 1e6 for case in rows], "-o",
                     label=f"read, {label}")
        axes[1].plot(finished, [case["bytes_needed"] / 1e6 for case in rows], ":",
                     label=f"needed, {label}")
        axes[1].plot(finished, [case["input_bytes"] / 1e6 for case in rows], "--", alpha=0.5,
                     label=f"all media, {label}")
        axes[2].plot(finished, [case["rerun_driver_peak_rss_bytes"] / 1e9 for case in rows], "-o",
                     label=label)
    titles = ("rerun seconds over a fresh 40-row job", "MB read from S3", "driver peak RSS (GB)")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xlabel("finished rows in the output (N)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[1].set_yscale("log")
    figure.tight_layout()
    path = RESULTS_DIR / f"resume_scaling{suffix}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [str(path)]


def plot_video_prefill(result: dict, suffix: str) -> list[str]:
    """TTFT against prompt tokens (median, min-max bars, FLOP floor dotted), the time split at
    the longest length, and the selection overhead's share of TTFT (the paper's Table E)."""
    lengths = sorted(result["figures"]["lengths"], key=lambda row: row["prompt_tokens"])
    names = [variant["method"]["name"] for variant in lengths[0]["variants"]]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 5))
    tokens = [row["prompt_tokens"] for row in lengths]
    for index, name in enumerate(names):
        rows = [next(v for v in row["variants"] if v["method"]["name"] == name) for row in lengths]
        colour = "black" if name == "dense" else f"C{index}"
        medians = [v["ttft_seconds"] for v in rows]
        errors = [[m - v["ttft_spread"]["min"] for m, v in zip(medians, rows)],
                  [v["ttft_spread"]["max"] - m for m, v in zip(medians, rows)]]
        left.errorbar(tokens, medians, yerr=errors, fmt="-o", color=colour, label=name,
                      markersize=3, capsize=2)
        left.plot(tokens, [v["floor_seconds"] for v in rows], ":", color=colour, linewidth=0.8)
        if name != "dense":
            right.plot(tokens, [100 * v["selection_share_of_ttft"] for v in rows], "-o",
                       color=colour, label=name, markersize=3)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("prompt tokens (video)")
    left.set_ylabel("time to first token, s (dotted: FLOP floor)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    longest = lengths[-1]
    parts = ("selection_total", "attention_kernel", "compress", "attention_glue", "rest_of_model")
    bottoms = [0.0] * len(names)
    for part in parts:
        values = [v["split_seconds"][part] for v in longest["variants"]]
        middle.barh(names, values, left=bottoms, label=part)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for index, variant in enumerate(longest["variants"]):
        middle.text(bottoms[index], index, f" kept {variant['kept_ratio_mean']:.2f}", va="center",
                    fontsize=7)
    middle.set_xlabel(f"seconds at {longest['prompt_tokens']} tokens ({longest['frames']} frames)")
    middle.legend(fontsize=7)
    right.set_xscale("log", base=2)
    right.set_xlabel("prompt tokens (video)")
    right.set_ylabel("probes + selection, % of TTFT")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.suptitle(f"{result['settings']['model']}", fontsize=9)
    figure.tight_layout()
    path = RESULTS_DIR / f"video_prefill{suffix}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [str(path)]


def plot_frontier(result: dict, suffix: str) -> list[str]:
    """Agreement against the longest length's prefill speed-up, the Pareto front joined."""
    rows = [r for r in result["figures"]["rows"]]
    longest = max(int(key.split("_")[1]) for r in rows for key in r
                  if key.startswith("speedup_"))
    speed_key = f"speedup_{longest}"
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, agreement_key, title in ((axes[0], "agreement", "all documents"),
                                       (axes[1], "held_out_agreement", "held-out family")):
        timed = [r for r in rows if speed_key in r and r.get(agreement_key) is not None]
        for row in timed:
            is_peer = row["family"] != "zipvl"
            axis.scatter(row[speed_key], row[agreement_key], marker="s" if is_peer else "o",
                         color="tab:gray" if is_peer else
                         ("tab:red" if row["on_front"] else "tab:blue"), zorder=3)
            axis.annotate(row["config_name"], (row[speed_key], row[agreement_key]),
                          fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = sorted((r for r in timed if r["on_front"]), key=lambda r: r[speed_key])
        axis.plot([r[speed_key] for r in front], [r[agreement_key] for r in front], "-",
                  color="tab:red", alpha=0.5, label="Pareto front (all documents)")
        axis.axvline(1.35, color="tab:green", linestyle=":", label="1.35x target")
        axis.axhline(0.7, color="tab:orange", linestyle=":", label="0.7 agreement")
        axis.set_xlabel(f"prefill speed-up over dense SDPA at {longest} tokens")
        axis.set_ylabel("greedy agreement with dense (first 32 tokens)")
        axis.set_title(f"agreement ({title}) against speed; squares: peers at equal budget")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path = RESULTS_DIR / f"frontier{suffix}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [str(path)]


def main() -> None:
    parser = argparse.ArgumentParser(description="plot the latest benchmark results")
    parser.add_argument("--quick", action="store_true", help="plot the --quick results")
    args = parser.parse_args()
    suffix = "-quick" if args.quick else ""
    written: list[str] = []
    for name, plotter in (("fidelity", plot_fidelity), ("prefill", plot_prefill),
                          ("decode", plot_decode), ("resume", plot_resume),
                          ("video-prefill", plot_video_prefill), ("frontier", plot_frontier)):
        result = _try_load(name, args.quick)
        if result is not None:
            written += plotter(result, suffix)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
