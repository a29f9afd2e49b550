"""The KubeRay example stays a job this version accepts (Kubernetes itself is not run here).

Its entrypoint is parsed as the shell would split it, and its job file (the ConfigMap is
made from ``jobs/captions-s3.yaml``) is loaded with its ``--set`` overrides through the
real job loader, so a renamed field or a changed command breaks this test, not a user.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from pipeline.job_file import load_job

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"


def test_the_rayjob_entrypoint_is_a_valid_job():
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    command = shlex.split(manifest["spec"]["entrypoint"])
    assert command[:3] == ["zipvl-batch", "run", "/jobs/captions.yaml"]
    overrides = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    spec = load_job(REPO / "jobs" / "captions-s3.yaml", overrides)
    assert spec.input.path.startswith("s3://") and spec.output.path.startswith("s3://")
    runtime_env = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    assert manifest["spec"]["rayClusterSpec"]["rayVersion"] == _installed_ray()


def _installed_ray() -> str:
    import importlib.metadata

    return importlib.metadata.version("ray")
