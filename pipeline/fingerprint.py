"""What makes two runs' rows belong in one dataset: the job's fingerprint in its output.

The first run on an output folder records ``.zipvl/fingerprint.json``: the model
(preset or checkpoint, revision, family, dtype, image-token cap), the task and its
prompt, the video sampling, the generation settings, the ZipVL config, and the input column mapping.
A later run whose fingerprint differs refuses (``JobChanged``, exit 1) with the
fields that changed: resuming a caption job with another model or prompt would
mix two models' answers in one dataset, and nothing else would say so.
``output.allow_job_change: true`` accepts the change; the new fingerprint is then
recorded. Resources, paths, batch sizes and Ray settings are not part of it: they
change how the rows are made, not what they say.

A ZipVL field added in a later version is missing from a fingerprint an earlier one
recorded; it is compared at its default, which for every field added since is what the
earlier version did (new fields are extensions that default to off). So an upgrade
alone does not refuse to resume a job, and a field set away from its default does.
"""

from __future__ import annotations

import json
import posixpath
import sys
from typing import Any

import pyarrow.fs as pafs

from pipeline.errors import JobError
from pipeline.output import OUTPUT_COLUMNS, read_json, write_bytes_atomically
from zipvl.config import ZipVLConfig

FINGERPRINT_NAME = ".zipvl/fingerprint.json"


class JobChanged(JobError):
    """The job differs from the one that wrote the output's rows."""


def job_fingerprint(spec: Any) -> dict[str, Any]:
    """The settings that decide what an output row says."""
    settings = spec.model_settings().model_dump(mode="json")
    config = spec.zipvl_config()
    return {
        "model": {name: settings[name] for name in ("preset", "tiny", "name_or_path", "revision",
                                                    "family", "dtype", "max_image_tokens")},
        "task": spec.task.model_dump(mode="json"),
        "video": spec.video.model_dump(mode="json"),
        "generation": spec.generation.model_dump(mode="json"),
        "zipvl": "dense" if config is None else config.to_dict(),
        "input_columns": spec.input.columns.model_dump(mode="json"),
        # Rows written under another schema do not belong in one dataset with these.
        "output_columns": list(OUTPUT_COLUMNS),
    }


def check_fingerprint(filesystem: pafs.FileSystem, output_dir: str, spec: Any) -> None:
    """Record the fingerprint, or refuse a run whose job changed (see the module docstring).

    An output with rows but no fingerprint (written before it existed) takes this run's.
    """
    path = posixpath.join(output_dir, FINGERPRINT_NAME)
    current = job_fingerprint(spec)
    on_file = read_json(filesystem, path)
    recorded = with_added_zipvl_defaults(on_file) if on_file is not None else None
    if recorded is not None and recorded != current:
        changes = _differences(recorded, current)
        if not spec.output.allow_job_change:
            raise JobChanged(
                f"output.path: {spec.output.path} holds rows of a different job; changed: "
                + "; ".join(changes)
                + ". Run into a new output.path, or set output.allow_job_change: true to mix "
                  "them on purpose")
        print("[zipvl-batch] warning: the job changed since the output's earlier rows ("
              + "; ".join(changes) + "); output.allow_job_change is true", file=sys.stderr)
    if on_file != current:
        data = json.dumps(current, indent=2, sort_keys=True).encode()
        write_bytes_atomically(filesystem, path, data)


def with_added_zipvl_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """``recorded`` with the ZipVL fields it lacks at their defaults (see the module docstring)."""
    zipvl = recorded.get("zipvl")
    if not isinstance(zipvl, dict):
        return recorded
    added = {name: value for name, value in ZipVLConfig().to_dict().items() if name not in zipvl}
    return {**recorded, "zipvl": {**added, **zipvl}}


def _differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in sorted(set(before) | set(after)):
            changes += _differences(before.get(key), after.get(key), f"{prefix}{key}.")
        return changes
    if before != after:
        return [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]
    return []
