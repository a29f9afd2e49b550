"""A hub model's revision, pinned when a run starts, so every node loads the same weights.

A branch or tag (``main``, ``v1.0``) moves. A job whose actors start hours apart (spot
nodes, restarts) would otherwise mix two checkpoints' answers in one dataset. The
driver resolves the job's revision to the commit it names now, from the hub or,
offline, from the local cache's ref; the run then carries that commit: every actor
loads it and the output's fingerprint records it, so a rerun after the branch moved
refuses (``fingerprint``) instead of mixing. Local folders, presets of tiny models and
explicit commits need nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pipeline.errors import JobError, first_line

COMMIT = re.compile(r"[0-9a-f]{40}")


def pinned_revision(settings: Any) -> str | None:
    """The commit the job's hub model names now (None: not a hub model)."""
    name = settings.name_or_path
    if settings.tiny is not None or name is None or os.path.isdir(name):
        return None
    revision = settings.revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants, try_to_load_from_cache

    problem = "the hub is offline (HF_HUB_OFFLINE)"
    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(name, revision=revision).sha
        except Exception as error:  # noqa: BLE001 (the cache may still answer)
            problem = first_line(error)
    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    raise JobError(f"model.revision: cannot pin {name}@{revision} to a commit ({problem}; "
                   "not in the local cache either); give model.revision as a commit hash")


def with_pinned_revision(spec: Any) -> Any:
    """`spec` with its hub model's revision replaced by the commit it names now."""
    settings = spec.model_settings()
    commit = pinned_revision(settings)
    if commit is None or commit == settings.revision:
        return spec
    model = spec.model.model_copy(update={"revision": commit})
    model._settings = settings.model_copy(update={"revision": commit})
    return spec.model_copy(update={"model": model})
