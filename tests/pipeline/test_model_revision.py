"""A hub model's branch is pinned to its commit when a run starts (offline: from the cache).

The Hugging Face cache is a real one in layout (``models--org--name/refs/<branch>`` and
``snapshots/<commit>/``), made in a temporary folder; the hub is offline, as in CI.
When the branch moves, the pinned job's fingerprint changes, so a rerun refuses instead
of mixing two checkpoints' answers in one output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from pipeline.errors import JobError
from pipeline.fingerprint import job_fingerprint
from pipeline.job_file import load_job
from pipeline.model_revision import with_pinned_revision
from tests.conftest import CAPTIONS_JOB

REPO_ID = "acme/captioner"


def _cache(root: Path, branch: str, commit: str) -> None:
    folder = root / f"models--{REPO_ID.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / branch).write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "config.json").write_text('{"model_type": "llava"}')


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _spec(*overrides: str):
    return load_job(CAPTIONS_JOB, ["model.preset=null", f"model.name_or_path={REPO_ID}",
                                   "output.path=unused", *overrides])


def test_a_branch_is_pinned_to_its_commit_and_a_moved_branch_changes_the_job(offline_cache):
    first, second = "1" * 40, "2" * 40
    _cache(offline_cache, "main", first)
    spec = _spec()
    assert spec.model_settings().revision is None
    pinned = with_pinned_revision(spec)
    assert pinned.model_settings().revision == first
    assert job_fingerprint(pinned)["model"]["revision"] == first

    _cache(offline_cache, "main", second)  # the branch moved on the hub
    moved = with_pinned_revision(_spec())
    assert moved.model_settings().revision == second
    assert job_fingerprint(moved) != job_fingerprint(pinned)


def test_a_tag_and_a_commit(offline_cache):
    _cache(offline_cache, "v1.0", "3" * 40)
    assert with_pinned_revision(_spec("model.revision=v1.0")).model_settings().revision == "3" * 40
    commit = "4" * 40
    assert with_pinned_revision(_spec(f"model.revision={commit}")).model_settings().revision == commit


def test_an_unknown_revision_offline_is_refused(offline_cache):
    with pytest.raises(JobError, match=r"^model.revision: cannot pin acme/captioner@main"):
        with_pinned_revision(_spec())
