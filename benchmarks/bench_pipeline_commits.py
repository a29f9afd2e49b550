"""Benchmark: ``zipvl-batch run`` at two commits, interleaved, to tell a code change from machine drift.

    python -m benchmarks.bench_pipeline_commits --base d9b890e          # base vs this checkout
    python -m benchmarks.bench_pipeline_commits --base A --head B --pairs 3

When ``bench_pipeline`` reads slower than an earlier run, the question is whether the code
or the machine moved: this runs the pipeline of each commit (a ``git worktree`` of it, run
through that commit's own ``bench_pipeline.run_pipeline``, so each side also uses its own
benchmark code) alternately, ``--pairs`` times, the order flipped every pair, on
bench-llava with 2 workers and 160 rows, in the same venv. It reports each side's
first-batch and wall times, their medians, and each pair's ratio. Both sides must write
the same captions, row by row. Results:
``benchmarks/results/pipeline-commits-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import log, median_and_spread, write_result
from benchmarks.smollm2 import REPO_ROOT

# One run of one checkout's pipeline, in its own process so it imports that checkout only.
_ONE_RUN = """
import json, sys
from pathlib import Path
root, work = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, root)
from benchmarks import bench_pipeline as bench
from benchmarks.pipeline_baseline import dataset_path
assert bench.__file__.startswith(root), bench.__file__
model, rows = "bench-llava", 160
path = bench.model_path_for(model)
run = bench.run_pipeline(model, path, dataset_path(rows), rows,
                         bench.job_settings(model, path, None), 2, work)
import pyarrow.parquet as pq
table = pq.read_table(run["_output"], columns=["id", "output"])
print("RESULT " + json.dumps({
    "first_batch_seconds": run["first_batch_seconds"], "wall_seconds": run["wall_seconds"],
    "model_load_seconds": [actor["model_load_seconds"] for actor in run["actors"]],
    "outputs": dict(zip(table.column("id").to_pylist(), table.column("output").to_pylist()))}))
"""


def _commit(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", rev], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def _one_run(root: Path, work: Path) -> dict:
    completed = subprocess.run([sys.executable, "-c", _ONE_RUN, str(root), str(work)],
                               capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"the run at {root} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--head", default=None, help="the later commit (default: this checkout)")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench-commits-"))
    roots = {"base": scratch / "base"}
    commits = {"base": _commit(args.base)}
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(roots["base"]), commits["base"]],
                   cwd=REPO_ROOT, check=True)
    if args.head is None:
        roots["head"], commits["head"] = REPO_ROOT, _commit("HEAD")
    else:
        roots["head"], commits["head"] = scratch / "head", _commit(args.head)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(roots["head"]),
                        commits["head"]], cwd=REPO_ROOT, check=True)
    for root in roots.values():  # the models and data the benchmarks build, shared
        if root != REPO_ROOT and not (root / ".cache").exists():
            (root / ".cache").symlink_to(REPO_ROOT / ".cache")
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    try:
        for pair in range(args.pairs):
            for side in (("base", "head") if pair % 2 == 0 else ("head", "base")):
                work = scratch / f"{side}-{pair}"
                work.mkdir()
                result = _one_run(roots[side], work)
                runs[side].append(result)
                log(f"pair {pair + 1}, {side} ({commits[side][:7]}): first batch "
                    f"{result['first_batch_seconds']:.2f} s, wall {result['wall_seconds']:.2f} s")
    finally:
        for root in roots.values():
            if root != REPO_ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=REPO_ROOT)
    outputs_equal = all(run["outputs"] == runs["base"][0]["outputs"]
                        for side in runs for run in runs[side])
    figures = {
        "commits": commits,
        "outputs_equal": outputs_equal,
        **{side: {"first_batch_seconds": median_and_spread([r["first_batch_seconds"] for r in rs]),
                  "wall_seconds": median_and_spread([r["wall_seconds"] for r in rs]),
                  "model_load_seconds": [r["model_load_seconds"] for r in rs]}
           for side, rs in runs.items()},
        "head_over_base_wall": median_and_spread(
            [h["wall_seconds"] / b["wall_seconds"] for b, h in zip(runs["base"], runs["head"])]),
    }
    settings = {"model": "bench-llava", "rows": 160, "workers": 2, "pairs": args.pairs}
    write_result("pipeline-commits", False, settings, figures, started)
    for side in ("base", "head"):
        log(f"{side} {commits[side][:7]}: first batch median "
            f"{statistics.median(r['first_batch_seconds'] for r in runs[side]):.2f} s")
    if not outputs_equal:
        raise SystemExit("the two commits wrote different captions")


if __name__ == "__main__":
    main()
