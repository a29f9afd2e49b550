"""Resume at scale on S3: what a rerun costs when N rows are done and 40 are left.

For each N, on a real S3 server (SeaweedFS) behind a proxy that counts the bytes read:

* the input is N + 40 rows of images of ``--image-bytes`` each, in files of
  ``ROWS_PER_FILE`` rows written in row groups of ``ROW_GROUP_ROWS``; the last 40 rows
  form the last row group (a dataset's tail, or rows added since the last run);
* the output already holds the first N ids, in real shards of the project's schema;
* **rerun**: ``zipvl-batch run`` on it, which must do exactly the 40 rows;
* **fresh**: the same command on an input holding only those 40 rows, into an empty
  output (the floor: Python, Ray and the model start the same way).

Fresh and rerun alternate, ``--repeats`` times (the rerun's new shards are removed
between repeats). Recorded per run: wall seconds, bytes read from the store (all
clients, driver and workers), the driver process's peak RSS; per N: the bytes a resume
needs at least (the remaining rows' images, plus every id column chunk of the input
and of the output's shards, as stored) and the ratio of the bytes read to it, and
whether every id is in the output exactly once.

    python -m benchmarks.bench_resume                      # the recorded series
    python -m benchmarks.bench_resume --quick              # a small check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import load_latest, log, write_partial, write_result
from benchmarks.counting_proxy import counting_proxy
from pipeline.output import OUTPUT_SCHEMA
from pipeline.sample_data import IMAGE_TYPE
from tests.s3_server import running_s3_server

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("zipvl-batch")
JOB = REPO / "jobs" / "captions.yaml"
REMAINING = 40
ROW_GROUP_ROWS = 1000
ROWS_PER_FILE = 100_000
SHARD_ROWS = 100_000


def _png_like(size: int, rng: np.random.Generator) -> bytes:
    """A real PNG padded to `size` bytes with an ancillary chunk (decoders skip it)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    padding = max(0, size - len(png) - 12)
    payload = rng.bytes(padding)
    chunk = struct.pack(">I", padding) + b"zzPd" + payload
    chunk += struct.pack(">I", zlib.crc32(b"zzPd" + payload) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # after the IHDR chunk


def _write_input(filesystem, prefix: str, ids: list[str], image_bytes: int, seed: int) -> None:
    """`ids` as Parquet files of ROWS_PER_FILE rows, in row groups of ROW_GROUP_ROWS."""
    rng = np.random.default_rng(seed)
    images = [_png_like(image_bytes, rng) for _ in range(64)]  # reused: fabricating is slow
    schema = pa.schema([("id", pa.string()), ("image", IMAGE_TYPE)])
    for number, start in enumerate(range(0, len(ids), ROWS_PER_FILE)):
        chunk = ids[start:start + ROWS_PER_FILE]
        path = f"{prefix}/part-{number:05d}.parquet"
        with pq.ParquetWriter(path, schema, filesystem=filesystem, compression="none",
                              use_dictionary=False) as writer:
            for group in range(0, len(chunk), ROW_GROUP_ROWS):
                rows = chunk[group:group + ROW_GROUP_ROWS]
                cells = [{"bytes": images[(start + group + i) % 64], "path": None}
                         for i in range(len(rows))]
                writer.write_table(pa.table({"id": rows, "image": cells}, schema))


def _write_output(filesystem, prefix: str, ids: list[str]) -> None:
    """Finished shards of `ids` in the project's output schema."""
    for number, start in enumerate(range(0, len(ids), SHARD_ROWS)):
        chunk = ids[start:start + SHARD_ROWS]
        count = len(chunk)
        table = pa.table({
            "id": chunk, "output": ["a caption of this image"] * count, "status": ["ok"] * count,
            "error": pa.nulls(count, pa.string()), "error_kind": pa.nulls(count, pa.string()),
            "prompt_tokens": pa.array([40] * count, pa.int32()),
            "output_tokens": pa.array([8] * count, pa.int32()),
            "kept_ratio": pa.nulls(count, pa.float64()), "model": ["tiny-llava"] * count,
            "method": ["dense"] * count,
            "frame_timestamps": pa.nulls(count, pa.list_(pa.float64())),
            "video_duration": pa.nulls(count, pa.float64()),
        }, OUTPUT_SCHEMA)
        pq.write_table(table, f"{prefix}/part-fabricated-{number:05d}.parquet",
                       filesystem=filesystem, compression="zstd")


def _id_chunk_bytes(filesystem, prefix: str, column_names: tuple[str, ...]) -> int:
    """Stored bytes of the named columns' chunks in every Parquet file under `prefix`."""
    import pyarrow.fs as pafs

    total = 0
    for info in filesystem.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        if not info.path.endswith(".parquet"):
            continue
        metadata = pq.read_metadata(info.path, filesystem=filesystem)
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for column in range(row_group.num_columns):
                if row_group.column(column).path_in_schema in column_names:
                    total += row_group.column(column).total_compressed_size
    return total


def _run(output: str, input_path: str, environment: dict[str, str]) -> dict[str, Any]:
    """One ``zipvl-batch run``: wall seconds and the driver's peak RSS."""
    command = [str(CLI), "run", str(JOB), "--set", f"input.path={input_path}",
               "--set", f"output.path={output}", "--set", "resources.workers=1",
               "--set", "resources.batch_size=8", "--set", "generation.max_new_tokens=4",
               "--set", "zipvl=dense", "--set", "output.rows_per_file=1000"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:  # the kernel's high-water mark of the driver's resident memory
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    printed, _ = process.communicate(timeout=3600)
    sampler.join()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"the run failed ({process.returncode}):\n{printed[-4000:]}")
    return {"seconds": seconds, "driver_peak_rss_bytes": peak[0]}


def _ids_in(filesystem, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    ids: list[str] = []
    for info in filesystem.get_file_info(pafs.FileSelector(prefix, recursive=False)):
        if info.path.endswith(".parquet"):
            ids.extend(pq.read_table(info.path, columns=["id"], filesystem=filesystem)
                       .column("id").to_pylist())
    return ids


def _remove_new_shards(filesystem, prefix: str) -> None:
    import pyarrow.fs as pafs

    for info in filesystem.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.File and not name.startswith("part-fabricated-"):
            filesystem.delete_file(info.path)


def bench_case(server, proxy_url: str, counter, finished: int, image_bytes: int,
               repeats: int) -> dict[str, Any]:
    filesystem = server.filesystem()
    bucket = server.create_bucket()
    ids = [f"row-{index:09d}" for index in range(finished + REMAINING)]
    log(f"N={finished:,}, {image_bytes:,}-byte images: fabricating")
    _write_input(filesystem, f"{bucket}/input", ids, image_bytes, seed=1)
    _write_input(filesystem, f"{bucket}/fresh-input", ids[finished:], image_bytes, seed=1)
    _write_output(filesystem, f"{bucket}/output", ids[:finished])
    environment = {**os.environ, "AWS_ENDPOINT_URL": proxy_url, "AWS_ACCESS_KEY_ID": server.access_key,
                   "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_DEFAULT_REGION": server.region,
                   "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    runs: dict[str, list[dict[str, Any]]] = {"fresh": [], "rerun": []}
    once = True
    for repeat in range(repeats):
        for variant in ("fresh", "rerun"):
            output = f"{bucket}/{'output' if variant == 'rerun' else f'fresh-output-{repeat}'}"
            source = f"{bucket}/{'input' if variant == 'rerun' else 'fresh-input'}"
            counter.reset()
            measured = _run(f"s3://{output}", f"s3://{source}", environment)
            measured["bytes_read"] = counter.read_bytes
            measured["requests"] = counter.requests
            written = _ids_in(filesystem, output)
            expected = ids if variant == "rerun" else ids[finished:]
            measured["every_id_once"] = sorted(written) == expected
            once &= measured["every_id_once"]
            runs[variant].append(measured)
            log(f"  {variant}: {measured['seconds']:.1f} s, {measured['bytes_read'] / 1e6:.1f} MB "
                f"read, driver peak {measured['driver_peak_rss_bytes'] / 1e9:.2f} GB, "
                f"each id once: {measured['every_id_once']}")
            if variant == "rerun" and repeat < repeats - 1:
                _remove_new_shards(filesystem, output)
    needed = (REMAINING * image_bytes + _id_chunk_bytes(filesystem, f"{bucket}/input", ("id",))
              + _id_chunk_bytes(filesystem, f"{bucket}/output", ("id", "status", "error_kind")))
    rerun_bytes = min(run["bytes_read"] for run in runs["rerun"])
    fresh_seconds = float(np.median([run["seconds"] for run in runs["fresh"]]))
    rerun_seconds = float(np.median([run["seconds"] for run in runs["rerun"]]))
    filesystem.delete_dir_contents(bucket)
    return {
        "finished_rows": finished, "remaining_rows": REMAINING, "image_bytes": image_bytes,
        "input_bytes": (finished + REMAINING) * image_bytes,
        "runs": runs,
        "fresh_seconds_median": fresh_seconds, "rerun_seconds_median": rerun_seconds,
        "overhead_seconds": rerun_seconds - fresh_seconds,
        "rerun_bytes_read": rerun_bytes, "bytes_needed": needed,
        "bytes_read_over_needed": rerun_bytes / needed,
        "rerun_driver_peak_rss_bytes": max(run["driver_peak_rss_bytes"] for run in runs["rerun"]),
        "every_id_once": once,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    if arguments.quick:
        cases = [(200_000, 1000), (100, 10_000)]
    else:
        # Realistic images where the disk allows, tiny ones for the row counts.
        cases = [(200_000, 1000), (200_000, 4000), (200_000, 16_000),
                 (100, 100_000), (100, 1_000_000), (100, 3_000_000), (100, 10_000_000)]
    settings = {"cases": cases, "repeats": arguments.repeats, "remaining": REMAINING,
                "row_group_rows": ROW_GROUP_ROWS, "rows_per_file": ROWS_PER_FILE,
                "job": str(JOB.relative_to(REPO)), "store": "SeaweedFS (weed mini) on 127.0.0.1"}
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as temp, \
            running_s3_server(Path(temp)) as server, \
            counting_proxy(server.endpoint_url) as (proxy_url, counter):
        for image_bytes, finished in cases:
            repeats = 1 if finished >= 3_000_000 else arguments.repeats
            results.append(bench_case(server, proxy_url, counter, finished, image_bytes, repeats))
            write_partial("resume", arguments.quick, settings, {"cases": results}, started)
    path = write_result("resume", arguments.quick, settings, {"cases": results}, started)
    log(f"wrote {path}")
    try:
        from benchmarks.plot import plot_resume
    except ImportError as error:  # matplotlib is in the bench extra
        log(f"no plot ({error})")
        return
    for written in plot_resume(load_latest("resume", arguments.quick),
                               "-quick" if arguments.quick else ""):
        log(f"wrote {written}")


if __name__ == "__main__":
    main()
