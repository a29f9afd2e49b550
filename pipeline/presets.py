"""Find and read the shipped presets: ``configs/models/*.yaml`` and ``configs/zipvl/*.yaml``.

A preset value in a job file is either a name (the file name without ``.yaml``, looked
up in the shipped presets) or a path to a YAML file (anything ending in ``.yaml``/``.yml``
or containing a path separator; relative paths resolve against the current directory).
The presets ship inside the package (``pipeline/configs/``, package data; the
checkout's top-level ``configs/`` links to it), so they are found the same way from an
editable or a plain install and from any working directory; ``ZIPVL_BATCH_CONFIGS``
points at another folder of the same layout.

Model presets (``configs/models/NAME.yaml``), validated with :class:`ModelPreset`:
either ``tiny: <family>`` (a tiny random-weight model built offline by
``zipvl.testing``; its captions are noise) or ``name_or_path: <hub id or local path>``,
plus optional defaults for ``family``, ``dtype``, ``max_image_tokens``,
``trust_remote_code`` and ``revision`` that a job's ``model`` section may override.

ZipVL presets (``configs/zipvl/NAME.yaml``): a mapping of ``zipvl.ZipVLConfig`` fields
(an empty mapping means the ``ZipVLConfig`` defaults), or ``enabled: false`` alone,
meaning dense (no ZipVL). The mapping is returned raw: ``pipeline.spec`` validates it
exactly as it validates an inline ``zipvl:`` mapping.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from pipeline.families import MODEL_TYPES

PresetKind = Literal["models", "zipvl"]

DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

# The model types a job may name, from the one registry (``pipeline.families``).
Family = Literal[MODEL_TYPES]  # type: ignore[valid-type]
FamilyOrAuto = Literal[("auto", *MODEL_TYPES)]  # type: ignore[valid-type]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

CONFIGS_ENV = "ZIPVL_BATCH_CONFIGS"


class PresetError(ValueError):
    """A preset that cannot be found or read; the caller prefixes the field path."""


class ModelPreset(BaseModel):
    """The contents of one ``configs/models/*.yaml`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiny: Family | None = None
    name_or_path: str | None = Field(default=None, min_length=1)
    family: FamilyOrAuto = "auto"
    dtype: Dtype = "auto"
    max_image_tokens: PositiveInt | None = None
    trust_remote_code: bool = False
    revision: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelPreset:
        if (self.tiny is None) == (self.name_or_path is None):
            raise ValueError("set exactly one of 'tiny' (a family) or 'name_or_path'")
        if self.tiny is not None and self.family not in ("auto", self.tiny):
            raise ValueError(f"family {self.family!r} contradicts tiny: {self.tiny}")
        return self


def configs_dir() -> Path:
    """The folder holding ``models/`` and ``zipvl/`` presets."""
    override = os.environ.get(CONFIGS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parent / "configs"


def preset_names(kind: PresetKind) -> list[str]:
    """Names of the shipped presets of one kind, sorted."""
    folder = configs_dir() / kind
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def is_preset_path(value: str) -> bool:
    """Whether a preset value is a file path rather than a shipped preset's name."""
    return value.endswith((".yaml", ".yml")) or "/" in value or os.sep in value


def find_preset(kind: PresetKind, name_or_path: str) -> Path:
    """The YAML file a preset value refers to; ``PresetError`` lists the choices if none."""
    if is_preset_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PresetError(f"preset file not found: {name_or_path}")
        return path.resolve()
    path = configs_dir() / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        available = ", ".join(preset_names(kind)) or "none"
        raise PresetError(f"unknown preset {name_or_path!r}; available: {available} "
                          f"(or a path to a .yaml file)")
    return path


def read_preset(kind: PresetKind, name_or_path: str) -> dict[str, Any]:
    """The raw mapping in a preset file (an empty file is an empty mapping)."""
    path = find_preset(kind, name_or_path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PresetError(f"{path}: invalid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise PresetError(f"{path}: a preset must be a mapping, got {type(values).__name__}")
    return values


def load_model_preset(name_or_path: str) -> ModelPreset:
    """Read and validate a model preset (``pydantic.ValidationError`` if its fields are bad)."""
    return ModelPreset.model_validate(read_preset("models", name_or_path))


def load_zipvl_preset(name_or_path: str) -> dict[str, Any]:
    """Read a ZipVL preset's raw mapping (validated by the caller, like an inline mapping)."""
    return read_preset("zipvl", name_or_path)
