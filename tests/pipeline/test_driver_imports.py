"""The driver starts a run without importing torch or transformers, and checks the model
reference from its ``config.json`` alone (``pipeline.model_config``).

Every run pays the driver's imports before its first row moves (seconds for transformers
and torch); only the model actors need them. These tests run a fresh interpreter, so what
another test imported does not hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.families import MODEL_TYPES
from pipeline.job_file import load_job
from pipeline.model_config import read_model_config
from pipeline.preflight import validate_job
from tests.conftest import CAPTIONS_JOB
from zipvl.testing import tiny_model_path

HEAVY = ("torch", "transformers")


def _imported_after(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_driver_modules_import_neither_torch_nor_transformers():
    assert _imported_after("import pipeline.cli, pipeline.spec, pipeline.runner, pipeline.plan, "
                           "pipeline.stages, pipeline.input_source, pipeline.preflight") == set()
    # The check is able to fail: the modules the actors use do import them.
    assert _imported_after("import pipeline.model_runner") == set(HEAVY)


def test_validating_a_job_on_a_local_checkpoint_imports_neither(tmp_path: Path):
    checkpoint = tiny_model_path("llava")  # built here, in this process, before the probe
    code = (f"from pipeline.job_file import load_job\n"
            f"from pipeline.preflight import validate_job\n"
            f"spec = load_job({str(CAPTIONS_JOB)!r}, ['model.name_or_path={checkpoint}', "
            f"'output.path={tmp_path / 'out'}'])\n"
            f"assert validate_job(spec) == [], validate_job(spec)")
    assert _imported_after(code) == set()


def test_the_config_reader_agrees_with_transformers_on_every_family():
    from transformers import AutoConfig

    for family in MODEL_TYPES:
        path = tiny_model_path(family)
        assert read_model_config(str(path))["model_type"] == AutoConfig.from_pretrained(path).model_type


def test_a_folder_without_a_usable_config_is_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_model_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Llava"]}))
    with pytest.raises(ValueError, match="does not name a model_type"):
        read_model_config(str(tmp_path))


def test_an_unsupported_or_missing_model_is_a_problem_of_its_field(tmp_path: Path):
    checkpoint = tmp_path / "bert"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "bert"}))
    overrides = [f"output.path={tmp_path / 'out'}"]
    unsupported = validate_job(load_job(CAPTIONS_JOB, [*overrides, f"model.name_or_path={checkpoint}"]))
    assert unsupported == [f"model.name_or_path: model type 'bert' is not supported "
                           f"(supported: {', '.join(MODEL_TYPES)})"]
    missing = validate_job(load_job(CAPTIONS_JOB, [*overrides, f"model.name_or_path={tmp_path / 'none'}"]))
    assert len(missing) == 1 and missing[0].startswith("model.name_or_path: cannot load the model "
                                                       "configuration of"), missing
