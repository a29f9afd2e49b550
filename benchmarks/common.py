"""What every benchmark records beside its figures, and where it writes them.

Each run writes ``benchmarks/results/<name>-<UTC timestamp>.json`` and a stable
copy ``<name>-latest.json`` (``<name>-quick-...`` for ``--quick`` runs, so a
short run never overwrites the full one). Every file holds the machine
(platform, CPU model, cores, torch threads, memory), the versions (Python,
torch, transformers, numpy, the zipvl-batch git commit and whether the tree was
dirty), the exact command, and the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.smollm2 import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU, cores, torch threads, memory, load average, accelerator."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_bytes(),
        "cuda": torch.cuda.is_available(),
    }
    if hasattr(os, "getloadavg"):
        # Timings taken while other work runs are noisy: the load says how noisy.
        info["load_average_at_start"] = list(os.getloadavg())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def versions() -> dict[str, Any]:
    import transformers

    status = _git("status", "--porcelain", "--", "zipvl", "benchmarks")
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "zipvl_batch_commit": _git("rev-parse", "HEAD"),
        # zipvl/ or benchmarks/ differ from the commit: the commit alone does not pin the code.
        "zipvl_batch_dirty": bool(status) if status is not None else None,
    }


def command_line() -> str:
    """The command as typed (interpreter, ``-m module`` and every argument)."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy and torch values become lists and numbers."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_result(name: str, quick: bool, settings: dict[str, Any], figures: dict[str, Any],
                 started: float) -> Path:
    """Write the run's JSON (timestamped and ``-latest``); returns the timestamped path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = {
        "benchmark": name,
        "quick": quick,
        "created_utc": stamp,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "command": command_line(),
        "machine": machine_info(),
        "versions": versions(),
        "settings": settings,
        "figures": figures,
    }
    text = json.dumps(_plain(payload), indent=1, sort_keys=False)
    path = RESULTS_DIR / f"{stem}-{stamp}.json"
    path.write_text(text + "\n", encoding="utf-8")
    (RESULTS_DIR / f"{stem}-latest.json").write_text(text + "\n", encoding="utf-8")
    return path


def write_partial(name: str, quick: bool, settings: dict[str, Any], figures: dict[str, Any],
                  started: float) -> Path:
    """Overwrite ``<name>[-quick]-partial.json`` with what a running benchmark has so far."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    payload = {"benchmark": name, "quick": quick, "complete": False,
               "wall_seconds": round(time.perf_counter() - started, 2),
               "command": command_line(), "settings": settings, "figures": figures}
    path = RESULTS_DIR / f"{stem}-partial.json"
    path.write_text(json.dumps(_plain(payload), indent=1) + "\n", encoding="utf-8")
    return path


def load_latest(name: str, quick: bool = False) -> dict[str, Any]:
    stem = f"{name}-quick" if quick else name
    return json.loads((RESULTS_DIR / f"{stem}-latest.json").read_text(encoding="utf-8"))


@contextmanager
def timer(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``into[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option every benchmark takes."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice, one per core)")


def apply_threads(threads: int | None) -> None:
    """Set torch's thread count when ``--threads`` was given."""
    if threads:
        torch.set_num_threads(threads)


def median_and_spread(values: list[float]) -> dict[str, Any]:
    """The median of repeated measurements beside their spread: min, max, the range
    relative to the median, and every run (every benchmark reports repeats this way)."""
    import statistics

    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "relative_range": (max(values) - min(values)) / median if median else None,
            "runs": list(values)}
