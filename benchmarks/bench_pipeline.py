"""Benchmark 4 (issue 4): end-to-end rows/s of ``zipvl-batch run`` against a plain loop.

    python -m benchmarks.bench_pipeline            # full run, 3 rounds (~9 min on a quiet 2-core machine)
    python -m benchmarks.bench_pipeline --quick    # tiny model, 32 rows, 1 round (~1 min)

For each model (the ``tiny-llava`` preset, whose ``generate`` takes ~10-100 ms a
batch so pipeline overhead dominates, and ``bench-llava``, a bigger random-weight
LLaVA checkpoint from ``benchmarks.pipeline_baseline`` whose ``generate`` takes
about a second a batch) and the same generated Parquet of images:

* the **plain loop** (``benchmarks.pipeline_baseline``: decode, processor,
  ``generate``, collect, write one Parquet) in its own Python process, with
  torch's default thread count and with 1 thread (what one pipeline worker gets);
* ``zipvl-batch run jobs/captions.yaml --set ...`` with 1 and 2 workers on a
  local Ray of ``num_cpus=2``, each model replica on 1 thread. With 2 workers
  each asks for 0.5 CPU: 2 x 1 CPU would leave none for Ray Data's read and
  decode tasks, and the run hangs.

Both sides get the same rows, model, batch size, greedy settings (max_new_tokens,
do_sample false) and ZipVL config (the job's, resolved by ``pipeline.spec``), and
the benchmark checks that they produce the same ids and the same text per id.
Rows/s is measured from launching the process to its exit, so Python start-up,
imports, Ray start and model loading count, as they do for a user.

"Model busy" is the time spent generating (the processor and ``model.generate``)
over wall time, on both sides. In the plain loop it is timed in-process; the
pipeline times each batch itself and reports it per actor in
``.zipvl/report.json`` (``workers.timing_by_actor``: model load, batches,
seconds generating, when the first batch started and the last one finished),
which is what a user sees too: no pipeline code is patched.

Every variant runs ``--repeats`` times (3 by default), in rounds: each round runs every
variant once, starting one place later in the order than the round before. Each
figure is the median of its rounds beside its spread, each speed-up is the ratio of
wall times within one round (the same machine state), then the median of those, and
every round's pipeline output is checked against that round's plain loops.

Each run uses its own Ray temp folder (``RAY_TMPDIR``), so it starts its own
local Ray even when other Ray instances run on the machine (without it,
``ray.init()`` joins the most recent one). Results:
``benchmarks/results/pipeline-<UTC stamp>.json`` and ``pipeline-latest.json``
(``pipeline-quick-*`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median_and_spread

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_FILE = REPO_ROOT / "jobs" / "captions.yaml"
MODELS = ("tiny-llava", "bench-llava")
RAY_NUM_CPUS = 2
RUN_TIMEOUT_S = 900


# ---------------------------------------------------------------- running one side


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _run_process(command: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Run `command` from the repo root; wall seconds from launch to exit, start/end epochs."""
    load_before = _load_average()
    started = time.time()
    start_counter = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Our own process group only (the CLI and the Ray processes it started).
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    wall = time.perf_counter() - start_counter
    if returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        what = "timed out" if returncode is None else f"exited with {returncode}"
        raise RuntimeError(f"{' '.join(command)} {what}; log {log_path}:\n{tail}")
    return {"wall_seconds": wall, "started": started, "ended": started + wall,
            "load_average_before": load_before, "load_average_after": _load_average()}


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_baseline(model_path: Path, data: Path, rows: int, settings: dict[str, Any], threads: int,
                 work_dir: Path) -> dict[str, Any]:
    """The plain loop in its own process; returns its figures and where its output is."""
    tag = f"baseline-threads{threads or 'default'}"
    output, timings_file = work_dir / f"{tag}.parquet", work_dir / f"{tag}-timings.json"
    command = [sys.executable, "-m", "benchmarks.pipeline_baseline", "--data", str(data),
               "--model", str(model_path), "--zipvl", json.dumps(settings["zipvl"]),
               "--batch-size", str(settings["batch_size"]),
               "--max-new-tokens", str(settings["max_new_tokens"]),
               "--prompt", settings["prompt"], "--threads", str(threads),
               "--output", str(output), "--timings", str(timings_file)]
    run = _run_process(command, _child_env({}), work_dir / f"{tag}.log")
    timings = json.loads(timings_file.read_text())
    steps = timings["seconds"]
    first_batch_started = steps.pop("first_batch_started")
    wall = run["wall_seconds"]
    loop_seconds = sum(steps[name] for name in ("decode", "processor", "generate", "text_decode"))
    return {
        "command": _display(command),
        "torch_threads": timings["torch_threads"],
        "rows": timings["rows"],
        "wall_seconds": wall,
        "rows_per_second": rows / wall,
        "steady_rows_per_second": rows / loop_seconds,
        "model_busy_fraction": (steps["processor"] + steps["generate"]) / wall,
        "first_batch_seconds": first_batch_started - run["started"],
        "seconds": {"python_start_imports_and_exit": wall - sum(steps.values()), **steps},
        "load_average_before": run["load_average_before"],
        "load_average_after": run["load_average_after"],
        "_output": output,
    }


def analyse_report(report: dict[str, Any], started: float, ended: float,
                   rows: int) -> dict[str, Any]:
    """Per-actor model load, busy time and the run's phases, from the run's own report."""
    wall = ended - started
    timing_by_actor = report["workers"]["timing_by_actor"]
    actors = []
    for actor, timing in sorted(timing_by_actor.items()):
        actors.append({
            "actor": actor,
            **timing,
            "rows": report["workers"]["rows_by_actor"].get(actor, 0),
            "model_busy_fraction_of_wall": timing["generating_seconds"] / wall,
        })
    firsts = [t["first_batch_started"] for t in timing_by_actor.values()]
    lasts = [t["last_batch_finished"] for t in timing_by_actor.values()]
    first_batch, last_batch = (min(firsts), max(lasts)) if firsts else (None, None)
    generating = sum(t["generating_seconds"] for t in timing_by_actor.values())
    return {
        "actors": actors,
        "model_busy_fraction": generating / (wall * max(len(actors), 1)),
        "steady_rows_per_second": (rows / (last_batch - first_batch)
                                   if firsts and last_batch > first_batch else None),
        "timeline_seconds_from_launch": {
            # Before the first batch: Python start, imports, validation, Ray start, actors
            # starting and loading their models (model_load_seconds above).
            "first_batch_started": first_batch - started if firsts else None,
            "last_batch_finished": last_batch - started if lasts else None,
            "process_exited": wall,
        },
    }


def run_pipeline(model: str, model_path: Path, data: Path, rows: int, settings: dict[str, Any],
                 workers: int, work_dir: Path) -> dict[str, Any]:
    """``zipvl-batch run`` in its own process; returns its figures."""
    tag = f"pipeline-workers{workers}"
    output = work_dir / f"{tag}-output"
    command = [str(Path(sys.executable).with_name("zipvl-batch")), "run", str(JOB_FILE),
               *(arg for override in pipeline_overrides(model, model_path, data, output, settings,
                                                         workers) for arg in ("--set", override))]
    # A short path: Ray puts Unix sockets under it (~107 characters at most).
    ray_dir = Path(tempfile.mkdtemp(prefix="zb-ray-", dir="/tmp"))
    extra = {"RAY_TMPDIR": str(ray_dir),
             "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env = _child_env(extra)
    try:
        run = _run_process(command, env, work_dir / f"{tag}.log")
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    report = json.loads((output / ".zipvl" / "report.json").read_text())
    figures = analyse_report(report, run["started"], run["ended"], rows)
    wall = run["wall_seconds"]
    return {
        "command": _display(command),
        "environment": {**extra, "RAY_TMPDIR": "<fresh temp folder under /tmp>"},
        "workers": workers,
        "wall_seconds": wall,
        "rows_per_second": rows / wall,
        "report": {
            # The runner's own clock starts after Ray is up and stops before shutdown.
            "wall_time_seconds": report["wall_time_seconds"],
            "rows_per_second": report["throughput"]["rows_per_second"],
            "counts": report["counts"],
            "kept_ratio_mean": (report.get("kept_ratio") or {}).get("mean"),
            "rows_by_actor": report["workers"]["rows_by_actor"],
            "error_samples": report.get("error_samples", [])[:3],
        },
        **figures,
        "first_batch_seconds": figures["timeline_seconds_from_launch"]["first_batch_started"],
        "load_average_before": run["load_average_before"],
        "load_average_after": run["load_average_after"],
        "_output": output,
    }


def pipeline_overrides(model: str, model_path: Path, data: Path, output: Path,
                       settings: dict[str, Any], workers: int) -> list[str]:
    """The ``--set`` overrides of one pipeline run (the job file supplies everything else)."""
    # 1 CPU per worker when it leaves one for Ray Data's read/decode tasks; else a
    # fraction (Ray then sets OMP_NUM_THREADS=1, so each replica still has 1 thread).
    # workers x 1 CPU == num_cpus leaves none for those tasks and the run hangs.
    cpus_per_worker = 1 if workers < RAY_NUM_CPUS else (RAY_NUM_CPUS - 1) / workers
    model_override = (f"model.preset={model}" if model == "tiny-llava"
                      else f"model.name_or_path={model_path}")
    return [
        f"input.path={data}",
        f"output.path={output}",
        "output.resume=false",
        model_override,
        f"resources.workers={workers}",
        f"resources.cpus_per_worker={cpus_per_worker:g}",
        f"resources.batch_size={settings['batch_size']}",
        f"generation.max_new_tokens={settings['max_new_tokens']}",
        "generation.do_sample=false",
        f"ray.num_cpus={RAY_NUM_CPUS}",
        *([f"zipvl={settings['zipvl_override']}"] if settings["zipvl_override"] is not None else []),
    ]


def _display(command: list[str]) -> str:
    import shlex

    text = shlex.join(command)
    return text.replace(str(REPO_ROOT) + "/", "").replace(sys.executable, "python")


# ---------------------------------------------------------------- checking the work is the same


def compare_outputs(pipeline_output: Path, baseline_output: Path) -> dict[str, Any]:
    """Same ids, every pipeline row ok, and the same text per id (greedy)?"""
    import pyarrow.parquet as pq

    pipeline_rows = pq.read_table(pipeline_output, columns=["id", "output", "status"]).to_pylist()
    baseline_rows = pq.read_table(baseline_output).to_pylist()
    pipeline_text = {row["id"]: row["output"] for row in pipeline_rows}
    baseline_text = {row["id"]: row["output"] for row in baseline_rows}
    shared = sorted(set(pipeline_text) & set(baseline_text))
    differing = [row_id for row_id in shared if pipeline_text[row_id] != baseline_text[row_id]]
    return {
        "same_ids": set(pipeline_text) == set(baseline_text),
        "duplicate_ids_in_pipeline": len(pipeline_rows) - len(pipeline_text),
        "pipeline_error_rows": sum(row["status"] != "ok" for row in pipeline_rows),
        "rows_compared": len(shared),
        "rows_with_different_text": len(differing),
        "examples": [{"id": row_id, "pipeline": pipeline_text[row_id],
                      "baseline": baseline_text[row_id]} for row_id in differing[:3]],
        "agree": (set(pipeline_text) == set(baseline_text) and not differing
                  and len(pipeline_rows) == len(pipeline_text)
                  and all(row["status"] == "ok" for row in pipeline_rows)),
    }


# ---------------------------------------------------------------- main


def job_settings(model: str, model_path: Path, zipvl: str | None) -> dict[str, Any]:
    """Prompt, ZipVL config and generation settings exactly as the pipeline resolves them."""
    from pipeline.job_file import load_job

    overrides = (["model.preset=tiny-llava"] if model == "tiny-llava"
                 else [f"model.name_or_path={model_path}"])
    if zipvl is not None:
        overrides.append(f"zipvl={zipvl}")
    spec = load_job(JOB_FILE, overrides)
    config = spec.zipvl_config()
    return {
        "prompt": spec.task.render_prompt(None),
        "zipvl": None if config is None else config.to_dict(),
        "zipvl_label": spec.method_label(),
        "batch_size": spec.resources.batch_size,
        "max_new_tokens": spec.generation.max_new_tokens,
        "do_sample": False,
        "zipvl_override": zipvl,
    }


def model_path_for(model: str) -> Path:
    from benchmarks.pipeline_baseline import bench_llava_path
    from zipvl.testing import tiny_model_path

    return tiny_model_path("llava") if model == "tiny-llava" else bench_llava_path()


def _public(figures: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in figures.items() if not key.startswith("_")}


def bench_model(model: str, rows: int, worker_counts: list[int], baseline_threads: list[int],
                zipvl: str | None, repeats: int, work_dir: Path, log: Any) -> dict[str, Any]:
    """Every run for one model, `repeats` rounds of them, interleaved; outputs checked.

    Each round runs every plain loop and every pipeline once, starting one place later in
    the order each round (so no variant always runs first, on a cooler machine or a
    warmer page cache); each pipeline output is compared with every plain loop's of the
    same round. The figures are the medians over the rounds, beside their spread.
    """
    from benchmarks.pipeline_baseline import dataset_path

    model_path = model_path_for(model)
    data = dataset_path(rows)
    settings = job_settings(model, model_path, zipvl)
    shown_path = model_path.relative_to(REPO_ROOT) if model_path.is_relative_to(REPO_ROOT) else model_path
    variants = ([("baseline", f"threads={threads or 'default'}", threads) for threads in baseline_threads]
                + [("pipeline", f"workers={workers}", workers) for workers in worker_counts])
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(side, key): [] for side, key, _ in variants}
    agreement: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(repeats):
        round_dir = work_dir / model / f"round{round_index + 1}"
        round_dir.mkdir(parents=True)
        shift = round_index % len(variants)
        outputs: dict[tuple[str, str], Path] = {}
        for side, key, count in variants[shift:] + variants[:shift]:
            log(f"{model}: round {round_index + 1}/{repeats}, "
                f"{'plain loop' if side == 'baseline' else 'zipvl-batch run'}, {key}, {rows} rows")
            run = (run_baseline(model_path, data, rows, settings, count, round_dir)
                   if side == "baseline" else
                   run_pipeline(model, model_path, data, rows, settings, count, round_dir))
            runs[(side, key)].append(run)
            outputs[(side, key)] = run["_output"]
            busy = run["model_busy_fraction"]
            log(f"  {run['rows_per_second']:.2f} rows/s (wall {run['wall_seconds']:.1f} s, "
                f"1st batch {run['first_batch_seconds']:.1f} s"
                + (f", model busy {busy:.0%})" if busy is not None else ")"))
            if side == "pipeline" and run["report"]["error_samples"]:
                log(f"  WARNING: the pipeline wrote error rows, e.g. {run['report']['error_samples'][0]}")
        for (side, key), output in outputs.items():
            if side != "pipeline":
                continue
            for (other_side, baseline_key), baseline_output in outputs.items():
                if other_side != "baseline":
                    continue
                checked = compare_outputs(output, baseline_output)
                agreement.setdefault(f"pipeline {key} vs baseline {baseline_key}", []).append(checked)
                if not checked["agree"]:
                    log(f"  WARNING: outputs differ from the plain loop ({baseline_key}): "
                        f"{json.dumps({k: v for k, v in checked.items() if k != 'examples'})}")
    result: dict[str, Any] = {"model_path": str(shown_path), "data": str(data.relative_to(REPO_ROOT)),
                              "rows": rows, "settings": settings, "repeats": repeats,
                              "baseline": {}, "pipeline": {}}
    for (side, key), side_runs in runs.items():
        result[side][key] = {**median_figures(side_runs),
                             "runs": [_public(run) for run in side_runs]}
    result["agreement"] = {name: {"agree": all(check["agree"] for check in checks),
                                  "rounds": checks} for name, checks in agreement.items()}
    # Ratios of the same round (the same machine state), then their median.
    result["speedup_vs_baseline"] = {
        f"pipeline {p_key} / baseline {b_key}": median_and_spread(
            [b["wall_seconds"] / p["wall_seconds"]
             for p, b in zip(runs[("pipeline", p_key)], runs[("baseline", b_key)])])
        for (p_side, p_key) in runs if p_side == "pipeline"
        for (b_side, b_key) in runs if b_side == "baseline"
    }
    return result


# The figures each variant reports as the median of its rounds (and their min/max).
MEDIAN_FIGURES = ("rows_per_second", "steady_rows_per_second", "wall_seconds",
                  "first_batch_seconds", "model_busy_fraction")


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over `runs` of each of ``MEDIAN_FIGURES``, and ``spread`` (min, max, all)."""
    import statistics

    figures: dict[str, Any] = {"spread": {}}
    for name in MEDIAN_FIGURES:
        values = [run[name] for run in runs if run.get(name) is not None]
        figures[name] = statistics.median(values) if values else None
        if values:
            figures["spread"][name] = median_and_spread(values)
    return figures


def _cell(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def summary_lines(figures: dict[str, Any]) -> list[str]:
    """One line per variant, medians over its rounds: rows/s end to end and once running,
    wall (with its range), first batch, model busy, and whether every round's outputs agree."""
    lines = [f"{'model':<12} {'run':<28} {'rows/s':>7} {'steady':>7} {'wall s':>7} "
             f"{'wall range':>11} {'1st batch s':>11} {'busy':>5} {'agree':>5}"]
    for model, result in figures["models"].items():
        for side in ("baseline", "pipeline"):
            for key, run in result[side].items():
                wall = run["spread"]["wall_seconds"]
                if side == "baseline":
                    name, agree = f"plain loop {key}", ""
                else:
                    name = f"zipvl-batch {key}"
                    agree = "yes" if all(a["agree"] for check, a in result["agreement"].items()
                                         if check.startswith(f"pipeline {key} vs")) else "NO"
                lines.append(f"{model:<12} {name:<28} "
                             f"{_cell(run['rows_per_second'], '.2f', 7)} "
                             f"{_cell(run['steady_rows_per_second'], '.2f', 7)} "
                             f"{_cell(run['wall_seconds'], '.1f', 7)} "
                             f"{wall['min']:>5.1f}-{wall['max']:<5.1f} "
                             f"{_cell(run['first_batch_seconds'], '.1f', 11)} "
                             f"{_cell(run['model_busy_fraction'], '.0%', 5)} {agree:>5}")
        for pair, ratio in result["speedup_vs_baseline"].items():
            lines.append(f"{model:<12} {pair}: {ratio['median']:.3f}x "
                         f"(rounds {', '.join(f'{v:.3f}' for v in ratio['runs'])})")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few rows (< 2 minutes)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--rows", type=int, default=None, help="rows per model (default by mode)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline-threads", type=int, nargs="+", default=None,
                        help="torch threads of the plain loop; 0 = torch's default")
    parser.add_argument("--zipvl", default=None,
                        help="ZipVL preset for both sides (e.g. dense, paper); default: the job's")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of every run, interleaved (default 3; 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (outputs, logs)")
    args = parser.parse_args(argv)

    from benchmarks.common import log, write_result

    started = time.perf_counter()
    models = args.models or (["tiny-llava"] if args.quick else list(MODELS))
    rows_by_model = {"tiny-llava": 32 if args.quick else 320, "bench-llava": 16 if args.quick else 160}
    if args.rows:
        rows_by_model = dict.fromkeys(rows_by_model, args.rows)
    # torch's default thread count is what a user's loop gets; on a loaded machine it can
    # be many times slower than 1 thread (OpenMP threads wait on each other), so the
    # quick check uses 1 thread, as each pipeline worker does.
    baseline_threads = args.baseline_threads or ([1] if args.quick else [0, 1])
    repeats = args.repeats or (1 if args.quick else 3)
    work_dir = Path(tempfile.mkdtemp(prefix="pipeline-bench-", dir=REPO_ROOT / ".cache"))
    figures: dict[str, Any] = {"models": {}}
    try:
        for model in models:
            figures["models"][model] = bench_model(model, rows_by_model[model], args.workers,
                                                   baseline_threads, args.zipvl, repeats,
                                                   work_dir, log)
    finally:
        if args.keep:
            log(f"run folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    import pyarrow
    import ray

    settings = {
        "models": models,
        "rows": {model: rows_by_model[model] for model in models},
        "workers": args.workers,
        "baseline_threads": ["default" if t == 0 else t for t in baseline_threads],
        "ray_num_cpus": RAY_NUM_CPUS,
        "repeats": repeats,
        "zipvl": args.zipvl or "the job's (jobs/captions.yaml: default)",
        "job_file": str(JOB_FILE.relative_to(REPO_ROOT)),
        "library_versions": {"ray": ray.__version__, "pyarrow": pyarrow.__version__},
        "measured": "rows/s: rows / (process launch to exit). steady: rows / (first batch "
                    "start to last batch end) for the pipeline, rows / (decode + processor + "
                    "generate + text decode) for the plain loop. busy: time in the processor and "
                    "model.generate / wall (pipeline: the report's generating_seconds summed "
                    "over actors / (wall x workers)). "
                    "1st batch s: launch to the first batch entering the model. Each figure is "
                    "the median over the rounds (spread: min, max, every value); the "
                    "speed-ups are wall-time ratios within a round, then their median.",
    }
    figures["summary"] = summary_lines(figures)
    path = write_result("pipeline", args.quick, settings, figures, started)
    print("\n".join(figures["summary"]))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
