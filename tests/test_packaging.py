"""What `pip install` gives users: the declared ranges, the lock, and an installed package.

- Every runtime and test dependency is pinned in ``constraints.txt`` (the tested set).
- The upper bounds of the fast-moving dependencies stop at the minor version the lock
  tests; the lower bound of transformers is the version ``make test`` runs its second
  pass on (the Makefile reads it from ``pyproject.toml``).
- A wheel (not an editable install) carries the presets, so a job file in any folder
  that names ``preset: tiny-llava`` validates and runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST_MOVING = ("torch", "transformers", "ray")


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    return [Requirement(line) for line in declared]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_every_dependency_is_locked_within_its_range():
    pins = locked()
    for requirement in requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


@pytest.mark.parametrize("package", FAST_MOVING)
def test_fast_moving_upper_bounds_stop_at_the_tested_minor(package):
    requirement = next(r for r in requirements() if r.name == package)
    tested = locked()[package]
    upper = [spec for spec in requirement.specifier if spec.operator == "<"]
    assert len(upper) == 1, f"{package} needs an upper bound"
    assert Version(upper[0].version) == Version(f"{tested.major}.{tested.minor + 1}"), (
        f"{package}: the lock tests {tested}, the range admits up to {upper[0]}")


def test_the_lowest_transformers_pass_reads_the_lower_bound():
    requirement = next(r for r in requirements() if r.name == "transformers")
    (lower,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    made = subprocess.run(["make", "-s", "-p", "-n", "test-lowest"], cwd=REPO_ROOT,
                          capture_output=True, text=True).stdout
    assert f"TRANSFORMERS_LOWEST := {lower}" in made


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the checkout (ignored files left out): setuptools leaves build/ in the source
    # folder and would package stale modules from an earlier build.
    source = tmp_path_factory.mktemp("source") / "zipvl-batch"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    for name in tracked:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / name).is_symlink():
            target.symlink_to(os.readlink(REPO_ROOT / name))
        elif (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, target)
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder), str(source)], check=True, capture_output=True)
    (built,) = folder.glob("zipvl_batch-*.whl")
    return built


def test_the_wheel_ships_every_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in (REPO_ROOT / "configs").glob("*/*.yaml"):
        assert f"pipeline/configs/{preset.parent.name}/{preset.name}" in names


def test_an_installed_package_runs_a_job_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    job_folder = tmp_path / "elsewhere"
    job_folder.mkdir()
    sample = REPO_ROOT / "data" / "sample" / "images.parquet"
    pq.write_table(pq.read_table(sample).slice(0, 3), job_folder / "photos.parquet")
    (job_folder / "job.yaml").write_text(
        "input: {path: photos.parquet, columns: {id: id, image: image}}\n"
        "model: {preset: tiny-llava}\n"
        "generation: {max_new_tokens: 3}\n"
        "resources: {cpus_per_worker: 0.5}\n"
        "ray: {num_cpus: 2}\n"
        "output: {path: captions}\n")
    # The unpacked wheel comes first on the path: the checkout's editable install
    # (a meta-path finder consulted after it) cannot supply pipeline or zipvl.
    environment = {**os.environ, "PYTHONPATH": str(site), "RAY_AUTH_MODE": "disabled",
                   "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}
    environment.pop("ZIPVL_BATCH_CONFIGS", None)
    where = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
                           cwd=job_folder, env=environment, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where
    run = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "job.yaml"], cwd=job_folder,
                         env=environment, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    table = pq.read_table(job_folder / "captions")
    assert sorted(table.column("id").to_pylist()) == pq.read_table(
        job_folder / "photos.parquet").column("id").to_pylist()
    assert set(table.column("status").to_pylist()) == {"ok"}
