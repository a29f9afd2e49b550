"""Check that the demo's output holds what it should.

    python -m pipeline.demo_check [OUTPUT [SAMPLE]]

(defaults: ``output/captions`` and ``data/sample/images.parquet``, relative to the
current folder as in ``jobs/captions.yaml``).

``make demo`` ends with this, so its exit status says whether the captions are
really there, not only whether the job ran: every row of the shipped sample
exactly once, every good image an ``ok`` row with a non-empty caption, and only
the sample's deliberately broken images (``sample_data.BROKEN_ROWS``) as error
rows. The folder is read with pyarrow's dataset reader, as a user would.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.sample_data import BROKEN_ROWS, DEFAULT_DIR


def problems(output_dir: Path, sample: Path = DEFAULT_DIR / "images.parquet") -> list[str]:
    """What is wrong with the demo output in `output_dir` (empty: nothing)."""
    if not output_dir.is_dir():
        return [f"{output_dir} does not exist"]
    rows = ds.dataset(output_dir, format="parquet").to_table(
        columns=["id", "status", "output", "error"]).to_pylist()
    ids = pq.read_table(sample, columns=["id"]).column("id").to_pylist()
    broken = {ids[position] for position in BROKEN_ROWS}
    counts = Counter(row["id"] for row in rows)
    found = [f"id {row_id} appears {count} times" for row_id, count in counts.items() if count > 1]
    found += [f"id {row_id} is missing" for row_id in ids if row_id not in counts]
    for row in rows:
        expected = "error" if row["id"] in broken else "ok"
        if row["status"] != expected:
            found.append(f"id {row['id']}: status {row['status']}, expected {expected} "
                         f"(error: {row['error']})")
        elif expected == "ok" and not (row["output"] or "").strip():
            found.append(f"id {row['id']}: ok but the caption is empty")
    return found


def main() -> None:
    arguments = sys.argv[1:]
    output_dir = Path(arguments[0] if arguments else "output/captions")
    sample = Path(arguments[1] if len(arguments) > 1 else "data/sample/images.parquet")
    found = problems(output_dir, sample)
    if found:
        print(f"demo output {output_dir} is not right ({len(found)} problem(s)):", file=sys.stderr)
        for line in found[:20]:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
    print(f"demo output {output_dir}: every good image has a caption; the "
          f"{len(BROKEN_ROWS)} broken sample images are error rows")


if __name__ == "__main__":
    main()
