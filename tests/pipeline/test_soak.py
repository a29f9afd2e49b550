"""Soak: 20,000 rows through the tiny model with 2 workers, with faults, then exactly once.

Not part of ``make test`` (marker ``soak``; run ``make soak``). A real head
(``ray start --head``), a real S3 server (SeaweedFS) for input and output, and the
``zipvl-batch`` command line. While the first run goes:

* at 15% and 30% of the rows, a model actor's process is SIGKILLed (Ray restarts it);
* at 45%, SeaweedFS is stopped for 5 s and started again (the retries wait it out);
* at 60%, the driver is SIGKILLed (a crash: no flush, no lock release).

A second run then finishes the job. The output must hold every id exactly once. The
driver's resident memory is sampled each second in both runs, with the rows in the
output; the result (rows/s, memory over time and its slope) and a plot go to
``benchmarks/results/soak-*.json`` and ``soak_memory.png``. The driver must stay flat:
its memory may not grow with the rows (less than 64 MB across the second half of a run).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.sample_data import IMAGE_TYPE
from tests.conftest import CAPTIONS_JOB

pytestmark = pytest.mark.soak
pytest_plugins = ["tests.s3_server"]

ROWS = 20_000
ROWS_PER_SHARD = 500
CLI = Path(sys.executable).with_name("zipvl-batch")
RAY = Path(sys.executable).with_name("ray")
FLAT_BYTES = 64 * 1024**2


def _tiny_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _generate_actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "MapWorker(MapBatches(GenerateStage))" in command:
                pids.append(int(entry.name))
    return pids


def _rows_done(server, bucket: str, last: int) -> int:
    """Rows in the output's finished shards so far (``ROWS_PER_SHARD`` each; the store
    may be down: then the last count)."""
    import pyarrow.fs as pafs

    try:
        infos = server.filesystem().get_file_info(pafs.FileSelector(f"{bucket}/out"))
    except OSError:
        return last
    return ROWS_PER_SHARD * sum(info.path.endswith(".parquet") for info in infos)


def _written_ids(server, bucket: str) -> list[str]:
    import pyarrow.fs as pafs

    filesystem = server.filesystem()
    ids: list[str] = []
    for info in filesystem.get_file_info(pafs.FileSelector(f"{bucket}/out")):
        if info.path.endswith(".parquet"):
            ids += pq.read_table(info.path, filesystem=filesystem, columns=["id"]).column("id").to_pylist()
    return ids


@pytest.fixture
def head(tmp_path_factory):
    from tests.s3_server import _free_ports

    port, dashboard = _free_ports(2)
    temp_dir = tmp_path_factory.mktemp("soak-ray")
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}",
                                f"--dashboard-port={dashboard}", "--num-cpus=4",
                                f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                               env=environment, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(15)
    yield f"127.0.0.1:{port}"
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)


def test_soak_with_faults_is_exactly_once_and_the_driver_stays_flat(s3_server, head, tmp_path):
    bucket = s3_server.create_bucket()
    filesystem = s3_server.filesystem()
    ids = [f"soak-{index:06d}" for index in range(ROWS)]
    images = [_tiny_png(seed) for seed in range(256)]
    for start in range(0, ROWS, 5000):
        part = ids[start:start + 5000]
        table = pa.table({"id": part, "image": [{"bytes": images[i % 256], "path": None}
                                                for i in range(start, start + len(part))]},
                         pa.schema([("id", pa.string()), ("image", IMAGE_TYPE)]))
        pq.write_table(table, f"{bucket}/in/part-{start // 5000}.parquet", filesystem=filesystem,
                       row_group_size=1000)
    environment = {**os.environ, **s3_server.environment(), "RAY_AUTH_MODE": "disabled"}
    command = [str(CLI), "run", str(CAPTIONS_JOB)] + [
        part for override in (f"input.path=s3://{bucket}/in/", f"output.path=s3://{bucket}/out/",
                              f"ray.address={head}", "resources.workers=2",
                              "resources.cpus_per_worker=1", "resources.gpus_per_worker=0",
                              "resources.batch_size=16", "resources.decode_workers=2",
                              f"output.rows_per_file={ROWS_PER_SHARD}", "generation.max_new_tokens=2",
                              "zipvl=dense") for part in ("--set", override)]

    timeline, faults = [], []
    started = time.monotonic()

    def run(planned: list[tuple[float, str]]) -> int:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=open(tmp_path / f"run-{len(faults)}.log", "w"))
        pending, done = list(planned), 0
        while process.poll() is None:
            done = _rows_done(s3_server, bucket, done)
            timeline.append({"t": time.monotonic() - started, "pid": process.pid,
                             "rss": _rss(process.pid), "rows_done": done})
            if pending and done >= pending[0][0] * ROWS:
                _, fault = pending.pop(0)
                faults.append({"t": time.monotonic() - started, "fault": fault, "rows_done": done})
                if fault == "actor kill":
                    for pid in _generate_actor_pids()[:1]:
                        os.kill(pid, signal.SIGKILL)
                elif fault == "S3 restart":
                    s3_server.stop()
                    time.sleep(5)
                    s3_server.start()
                elif fault == "driver SIGKILL":
                    process.kill()
            time.sleep(1)
        return process.returncode

    first = run([(0.15, "actor kill"), (0.30, "actor kill"), (0.45, "S3 restart"),
                 (0.60, "driver SIGKILL")])
    assert first == -signal.SIGKILL, (tmp_path / "run-0.log").read_text()[-3000:]
    second = run([])
    assert second == 0, (tmp_path / f"run-{len(faults)}.log").read_text()[-3000:]
    wall = time.monotonic() - started

    written = _written_ids(s3_server, bucket)
    exactly_once = sorted(written) == ids
    slopes = []
    for pid in dict.fromkeys(sample["pid"] for sample in timeline):
        samples = [s for s in timeline if s["pid"] == pid and s["rss"]]
        half = samples[len(samples) // 2:]
        if len(half) >= 5:
            slopes.append(max(s["rss"] for s in half) - min(s["rss"] for s in half))
    _record(timeline, faults, wall, exactly_once, slopes)
    assert exactly_once, f"{len(written)} rows written, {len(set(written))} distinct, of {ROWS}"
    assert [fault["fault"] for fault in faults] == ["actor kill", "actor kill", "S3 restart",
                                                    "driver SIGKILL"]
    assert all(spread < FLAT_BYTES for spread in slopes), slopes


def _record(timeline, faults, wall, exactly_once, spreads) -> None:
    from benchmarks.common import RESULTS_DIR, write_result

    figures = {"rows": ROWS, "wall_seconds": wall, "rows_per_second": ROWS / wall,
               "exactly_once": exactly_once, "faults": faults,
               "driver_rss_spread_second_half_bytes": spreads, "timeline": timeline}
    path = write_result("soak", False, {"rows": ROWS, "workers": 2, "model": "tiny-llava",
                                        "max_new_tokens": 2}, figures, time.perf_counter() - wall)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, (memory, rows) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for pid in dict.fromkeys(s["pid"] for s in timeline):
        samples = [s for s in timeline if s["pid"] == pid and s["rss"]]
        memory.plot([s["t"] for s in samples], [s["rss"] / 1e6 for s in samples], label=f"driver {pid}")
        rows.plot([s["t"] for s in samples], [s["rows_done"] for s in samples])
    for fault in faults:
        for axis in (memory, rows):
            axis.axvline(fault["t"], color="grey", linestyle=":")
        rows.annotate(fault["fault"], (fault["t"], fault["rows_done"]), fontsize=7, rotation=60)
    memory.set_ylabel("driver RSS (MB)")
    memory.legend(fontsize=7)
    rows.set_ylabel("rows in the output")
    rows.set_xlabel("seconds since the first run started")
    figure.suptitle(f"soak: {ROWS:,} rows, 2 workers, faults injected; {path.name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(RESULTS_DIR / "soak_memory.png", dpi=110)
    plt.close(figure)
