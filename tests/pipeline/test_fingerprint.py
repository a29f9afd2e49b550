"""A rerun of a changed job on an existing output refuses, naming what changed.

The reference is the fingerprint file the first run recorded: a real run writes it,
a rerun with another prompt (or model) must refuse before it writes any row, one
with other resources must not, and ``output.allow_job_change`` lets the change in.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.fingerprint import FINGERPRINT_NAME, JobChanged, job_fingerprint
from pipeline.job_file import load_job
from pipeline.runner import run_job
from tests.conftest import CAPTIONS_JOB
from tests.pipeline.test_system_faults import OVERRIDES

NEW_PROMPT = "Name the main colour."


def test_a_changed_prompt_or_model_refuses_and_other_resources_do_not(ray_cluster, tmp_path):
    output_dir = tmp_path / "out"
    base = [*OVERRIDES, f"output.path={output_dir}", f"ray.address={ray_cluster.address}"]
    first = load_job(CAPTIONS_JOB, [*base, "input.limit=2"])
    run_job(first)
    recorded = json.loads((output_dir / FINGERPRINT_NAME).read_text())
    assert recorded == job_fingerprint(first)
    shards = sorted(output_dir.glob("part-*"))

    changed = load_job(CAPTIONS_JOB, [*base, "input.limit=3", f"task.prompt={NEW_PROMPT}"])
    with pytest.raises(JobChanged, match=rf"changed: task.prompt: '{first.task.prompt}' -> "
                                         rf"'{NEW_PROMPT}'"):
        run_job(changed)
    other_model = load_job(CAPTIONS_JOB, [*base, "input.limit=3", "model.preset=tiny-qwen2-vl"])
    with pytest.raises(JobChanged, match=r"model.preset: 'tiny-llava' -> 'tiny-qwen2-vl'"):
        run_job(other_model)
    assert sorted(output_dir.glob("part-*")) == shards  # refused before writing anything

    more_workers = load_job(CAPTIONS_JOB, [*base, "input.limit=3", "resources.batch_size=1"])
    assert run_job(more_workers)["counts"]["processed"] == 1

    allowed = load_job(CAPTIONS_JOB, [*base, "input.limit=4", f"task.prompt={NEW_PROMPT}",
                                      "output.allow_job_change=true"])
    assert run_job(allowed)["counts"]["processed"] == 1
    assert json.loads((output_dir / FINGERPRINT_NAME).read_text())["task"]["prompt"] == NEW_PROMPT
    assert pq.read_table(output_dir).num_rows == 4


def test_a_zipvl_field_added_since_the_output_was_written_counts_at_its_default(tmp_path):
    import pyarrow.fs as pafs

    from pipeline.fingerprint import check_fingerprint

    output_dir = tmp_path / "out"
    (output_dir / ".zipvl").mkdir(parents=True)
    spec = load_job(CAPTIONS_JOB, [*OVERRIDES, f"output.path={output_dir}"])
    older = job_fingerprint(spec)
    # What a version before keep_text_tokens and budget_spread existed recorded.
    del older["zipvl"]["keep_text_tokens"], older["zipvl"]["budget_spread"]
    (output_dir / FINGERPRINT_NAME).write_text(json.dumps(older))
    filesystem = pafs.LocalFileSystem()
    check_fingerprint(filesystem, str(output_dir), spec)  # the same job: it resumes
    assert json.loads((output_dir / FINGERPRINT_NAME).read_text()) == job_fingerprint(spec)

    (output_dir / FINGERPRINT_NAME).write_text(json.dumps(older))
    keeping_text = load_job(CAPTIONS_JOB, [*OVERRIDES, f"output.path={output_dir}",
                                           "zipvl.keep_text_tokens=true"])
    with pytest.raises(JobChanged, match=r"zipvl.keep_text_tokens: False -> True"):
        check_fingerprint(filesystem, str(output_dir), keeping_text)
