"""Read a job file: strict YAML (``yaml.safe_load`` semantics, duplicate keys refused),
``--set`` overrides applied to the raw mapping (``overrides``), then validation
(``spec.parse_job``). ``load_job`` is the one entry point.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import SpecError
from pipeline.overrides import apply_override
from pipeline.spec import JobSpec, parse_job


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (the second one would silently win)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)


def read_job_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping in a job file; ``SpecError`` for a missing file or bad YAML."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"job file not found: {path}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read job file {path}: {error}") from None
    try:
        values = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: invalid YAML: {error}") from None
    if values is None:
        raise SpecError(f"{path}: the job file is empty")
    if not isinstance(values, dict):
        raise SpecError(f"{path}: a job file is a mapping of sections (input, task, model, "
                        f"zipvl, generation, resources, output, ray), got {type(values).__name__}")
    return values



def load_job(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a job file. ``name`` defaults to the file's stem."""
    values = read_job_file(path)
    for override in overrides:
        apply_override(values, override)
    if "name" not in values:
        values["name"] = Path(path).stem
    return parse_job(values)
