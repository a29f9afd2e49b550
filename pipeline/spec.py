"""The job file: a pydantic model validated once at the edge, trusted inside.

A job file (YAML) has the sections ``input``, ``task``, ``model``, ``zipvl``,
``generation``, ``resources``, ``output`` and ``ray`` (see ``jobs/captions.yaml`` for
a commented example and issue 3 for the requirements). Every section forbids unknown
keys, so a typo is an error naming the key instead of a silently ignored setting.

``load_job(path, overrides)`` reads the file, applies ``--set key.path=value``
overrides to the raw mapping, then validates. Every problem becomes a
``SpecError`` whose lines start with the field path (``zipvl.tau: must be in
(0, 1], got 1.5``). Presets (``configs/models``, ``configs/zipvl``) are resolved
during validation, so a spec that loaded has a usable model reference and ZipVL
config: ``spec.model_settings()`` and ``spec.zipvl_config()``.

``spec.model_dump()`` is the job as run, for ``.zipvl/report.json``: credentials in
``storage_options`` (``access_key``, ``secret_key``, ``session_token``) are redacted there and hidden
from ``repr``; the live values stay on the attributes for the storage layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline import presets
from pipeline.errors import SpecError
from pipeline.presets import Dtype, Family, FamilyOrAuto
from pipeline.redaction import redact, secret_values
from pipeline.storage import StorageOptions
from zipvl.config import ZipVLConfig

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
QUESTION_PLACEHOLDER = "{question}"
DEFAULT_VQA_PROMPT = QUESTION_PLACEHOLDER
DEFAULT_ZIPVL_PRESET = "default"
# Above the sample's 3 broken images in 40 (7.5%); a real dataset with more than one
# row in ten failing is more likely a wrong column or path than bad media.
DEFAULT_MAX_ERROR_FRACTION = 0.1


# Error type carrying a message and a field path relative to where it is raised, so
# checks that span fields (model validators) can still name the exact field.
_FIELD_ERROR = "spec_field"


def _field_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(_FIELD_ERROR, "{message}", {"message": message, "field": field})


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    return f"unknown key {key!r}{_suggest(key, known)}; known keys: {', '.join(known)}"


def _absolute_if_local(path: str) -> str:
    """URIs (``s3://...``) stay as they are; local paths become absolute against the cwd.

    Resolving once at load time means Ray workers, whose working directory may differ,
    see the same files the user meant.
    """
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _check_storage_options(value: Any) -> dict[str, Any]:
    """Per-job S3 overrides, validated by ``pipeline.storage.StorageOptions`` (one schema).

    The job keeps the mapping as written (only the keys the user gave); values are never
    echoed in messages: they may be credentials.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _field_error("", "must be a mapping of S3 options: "
                               + ", ".join(StorageOptions.model_fields))
    try:
        StorageOptions.model_validate(value)
    except ValidationError as error:
        item = error.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            raise _field_error(loc, _unknown_key(loc, StorageOptions.model_fields)) from None
        raise _field_error(loc, item["msg"].removeprefix("Value error, ")
                           .removeprefix("storage_options: ")) from None
    return dict(value)


class _Section(BaseModel):
    # coerce_numbers_to_str: `--set name=2024` and `id: 0` mean the strings.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class ColumnMapping(_Section):
    """Which input column holds each field the task reads."""

    id: str = Field(min_length=1)
    image: str | None = Field(default=None, min_length=1)
    video: str | None = Field(default=None, min_length=1)
    prompt: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _has_media(self) -> ColumnMapping:
        if self.image is None and self.video is None:
            raise _field_error("image", "map at least one of 'image' or 'video' to an input column")
        return self


class InputSection(_Section):
    path: str = Field(min_length=1)
    columns: ColumnMapping
    limit: PositiveInt | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)

    _absolute_path = field_validator("path")(_absolute_if_local)
    _options = field_validator("storage_options", mode="plain")(_check_storage_options)

    @field_serializer("storage_options")
    def _redact(self, options: dict[str, Any]) -> dict[str, Any]:
        return redact(options)


class TaskSection(_Section):
    """``caption``: one instruction for every row; ``vqa``: a template around the row's question."""

    type: Literal["caption", "vqa"] = "caption"
    prompt: str = Field(default=DEFAULT_CAPTION_PROMPT, min_length=1)
    video_frames: PositiveInt = 8

    @model_validator(mode="before")
    @classmethod
    def _default_prompt(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("prompt") is None:
            values = dict(values)
            is_vqa = values.get("type") == "vqa"
            values["prompt"] = DEFAULT_VQA_PROMPT if is_vqa else DEFAULT_CAPTION_PROMPT
        return values

    @model_validator(mode="after")
    def _template_fits_type(self) -> TaskSection:
        has_placeholder = QUESTION_PLACEHOLDER in self.prompt
        if self.type == "vqa" and not has_placeholder:
            raise _field_error("prompt", f"a vqa prompt is a template that must contain "
                                         f"{QUESTION_PLACEHOLDER} (where the row's question goes)")
        if self.type == "caption" and has_placeholder:
            raise _field_error("prompt", f"{QUESTION_PLACEHOLDER} is only filled for task.type vqa")
        return self

    def render_prompt(self, question: str | None = None) -> str:
        """The text instruction for one row (``question`` is the row's prompt column, vqa only)."""
        if self.type == "vqa":
            if question is None:
                raise ValueError("a vqa row needs a question")
            # replace, not str.format: prompts may contain other braces.
            return self.prompt.replace(QUESTION_PLACEHOLDER, question)
        return self.prompt


class ModelSettings(BaseModel):
    """The model section with its preset merged in: what the runner loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None
    tiny: Family | None  # a tiny random-weight model of this family, built offline
    name_or_path: str | None  # hub id, or an absolute local path when it exists here
    family: FamilyOrAuto  # auto: the checkpoint config's model_type decides
    dtype: Dtype
    max_image_tokens: int | None
    trust_remote_code: bool
    revision: str | None

    @property
    def label(self) -> str:
        """What the output's ``model`` column says."""
        return f"tiny:{self.tiny}" if self.tiny is not None else str(self.name_or_path)

    def resolved_dtype(self, cuda_available: bool) -> str:
        """``auto`` means bfloat16 on CUDA and float32 on CPU."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if cuda_available else "float32"


_MODEL_OVERRIDABLE = ("family", "dtype", "max_image_tokens", "trust_remote_code", "revision")


def _local_or_hub(name_or_path: str) -> str:
    expanded = os.path.expanduser(name_or_path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else name_or_path


class ModelSection(_Section):
    """``preset`` (configs/models) or ``name_or_path``; the other fields override the preset's."""

    preset: str | None = Field(default=None, min_length=1)
    name_or_path: str | None = Field(default=None, min_length=1)
    family: FamilyOrAuto = "auto"
    dtype: Dtype = "auto"
    max_image_tokens: PositiveInt | None = None
    trust_remote_code: bool = False
    revision: str | None = Field(default=None, min_length=1)

    _settings: ModelSettings | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> ModelSection:
        if (self.preset is None) == (self.name_or_path is None):
            raise _field_error("preset", "set exactly one of 'preset' (a file in configs/models) "
                                         "or 'name_or_path' (a hub id or local path)")
        settings: dict[str, Any] = {"preset": self.preset, "tiny": None, "name_or_path": None}
        if self.preset is not None:
            try:
                preset = presets.load_model_preset(self.preset)
            except presets.PresetError as error:
                raise _field_error("preset", str(error)) from None
            except ValidationError as error:
                where = presets.find_preset("models", self.preset)
                raise _field_error("preset", f"{where}: "
                                   + "; ".join(format_validation_error(error))) from None
            settings.update(preset.model_dump())
        else:
            settings["name_or_path"] = self.name_or_path
            settings.update({name: getattr(self, name) for name in _MODEL_OVERRIDABLE})
        # Fields the job sets explicitly win over the preset's defaults.
        settings.update({name: getattr(self, name) for name in _MODEL_OVERRIDABLE
                         if name in self.model_fields_set})
        if settings["tiny"] is not None:
            if settings["family"] not in ("auto", settings["tiny"]):
                raise _field_error("family", f"{settings['family']!r} contradicts the tiny "
                                             f"{settings['tiny']} model of preset {self.preset!r}")
            settings["family"] = settings["tiny"]
        if settings["name_or_path"] is not None:
            settings["name_or_path"] = _local_or_hub(settings["name_or_path"])
        self._settings = ModelSettings(**settings)
        return self


def _zipvl_problem(field: str, message: str, origin: str | None) -> PydanticCustomError:
    where = f" (in preset {origin})" if origin else ""
    return _field_error(field, message + where)


def resolve_zipvl(value: bool | str | dict[str, Any]) -> ZipVLConfig | None:
    """A ``zipvl:`` value (preset name/path, mapping, ``true``, ``false``) -> config, or None (dense).

    Raises the pydantic error type the spec formats; field paths are relative to ``zipvl``.
    """
    origin = None
    if value is False:
        return None
    if value is True:
        value = {}
    if isinstance(value, str):
        try:
            origin = str(presets.find_preset("zipvl", value))
            value = presets.load_zipvl_preset(value)
        except presets.PresetError as error:
            raise _field_error("", str(error)) from None
    mapping = dict(value)
    enabled = mapping.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise _zipvl_problem("enabled", "must be true or false", origin)
    if not enabled:
        if mapping:
            raise _zipvl_problem("enabled", "false means dense (no ZipVL); remove the other "
                                 f"keys ({', '.join(sorted(map(str, mapping)))})", origin)
        return None
    known = [f.name for f in dataclasses.fields(ZipVLConfig)] + ["enabled"]
    for key in mapping:
        if key not in known:
            raise _zipvl_problem(str(key), _unknown_key(str(key), known), origin)
    dense_layers = mapping.get("dense_layers", [])
    if not isinstance(dense_layers, (list, tuple)):
        raise _zipvl_problem("dense_layers", "must be a list of layer indices", origin)
    try:
        return ZipVLConfig.from_dict(mapping)
    except (TypeError, ValueError) as error:
        # ZipVLConfig says "ZipVLConfig.<field> <message>": keep the field as the path.
        match = re.match(r"ZipVLConfig\.(\w+) (.*)", str(error), re.DOTALL)
        if match:
            raise _zipvl_problem(match.group(1), match.group(2), origin) from None
        raise _zipvl_problem("", str(error), origin) from None


def _check_zipvl_value(value: Any) -> bool | str | dict[str, Any]:
    if isinstance(value, (bool, dict)) or (isinstance(value, str) and value.strip()):
        resolve_zipvl(value)  # errors now, with the field path; the job keeps the value as given
        return value
    raise _field_error("", "must be a preset name (configs/zipvl), a path to a preset file, "
                           "a mapping of ZipVLConfig fields, or false for dense")


class GenerationSection(_Section):
    max_new_tokens: PositiveInt = 32
    do_sample: bool = False  # false: greedy
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0)


def _check_gpus(value: Any) -> str | float:
    if value == "auto":
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise _field_error("", f"must be 'auto' or a number >= 0, got {value!r}")


class ResourcesSection(_Section):
    workers: PositiveInt = 1
    gpus_per_worker: Literal["auto"] | float = "auto"
    cpus_per_worker: NonNegativeFloat = 1.0
    batch_size: PositiveInt = 4
    decode_workers: PositiveInt = 1
    accelerator_resource: str | None = Field(default=None, min_length=1)

    _gpus = field_validator("gpus_per_worker", mode="plain")(_check_gpus)


class OutputSection(_Section):
    path: str = Field(min_length=1)
    rows_per_file: PositiveInt = 1000
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    resume: bool = True
    # The job fails (exit 3) when more than this share of its rows are error rows.
    max_error_fraction: float = Field(default=DEFAULT_MAX_ERROR_FRACTION, ge=0, le=1)

    _absolute_path = field_validator("path")(_absolute_if_local)
    _options = field_validator("storage_options", mode="plain")(_check_storage_options)

    @field_serializer("storage_options")
    def _redact(self, options: dict[str, Any]) -> dict[str, Any]:
        return redact(options)


class RaySection(_Section):
    address: str | None = Field(default=None, min_length=1)  # None: start a local Ray
    num_cpus: PositiveInt | None = None
    resources: dict[str, NonNegativeFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _local_only(self) -> RaySection:
        if self.address is not None:
            for name in ("num_cpus", "resources"):
                if getattr(self, name):
                    raise _field_error(name, "only applies to a local Ray (ray.address: null)")
        return self


class JobSpec(_Section):
    """A validated job. Build it with ``load_job`` (files) or ``parse_job`` (mappings)."""

    name: str = Field(default="job", min_length=1)
    input: InputSection
    task: TaskSection = Field(default_factory=TaskSection)
    model: ModelSection
    zipvl: bool | str | dict[str, Any] = DEFAULT_ZIPVL_PRESET
    generation: GenerationSection = Field(default_factory=GenerationSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    output: OutputSection
    ray: RaySection = Field(default_factory=RaySection)

    _zipvl_config: ZipVLConfig | None = PrivateAttr(default=None)

    _zipvl_value = field_validator("zipvl", mode="plain")(_check_zipvl_value)

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        columns = self.input.columns
        if self.task.type == "vqa" and columns.prompt is None:
            raise _field_error("input.columns.prompt",
                               "task.type vqa needs the input column holding the question")
        if self.task.type == "caption" and columns.prompt is not None:
            raise _field_error("input.columns.prompt",
                               "only task.type vqa reads a prompt column; remove it for caption")
        if self.input.path == self.output.path:
            raise _field_error("output.path", "must differ from input.path")
        self._zipvl_config = resolve_zipvl(self.zipvl)
        return self

    def zipvl_config(self) -> ZipVLConfig | None:
        """The ZipVL config to enable, or None to run dense."""
        return self._zipvl_config

    def model_settings(self) -> ModelSettings:
        """The model section with its preset merged in."""
        assert self.model._settings is not None  # set by validation
        return self.model._settings

    def method_label(self) -> str:
        """What the output's ``method`` column says: the config as JSON, or ``dense``."""
        config = self.zipvl_config()
        return "dense" if config is None else json.dumps(config.to_dict(), sort_keys=True)

    def report_dict(self) -> dict[str, Any]:
        """The job as run (credentials redacted) plus the resolved model and ZipVL settings."""
        config = self.zipvl_config()
        return {
            **self.model_dump(mode="json"),
            "resolved": {
                "model": self.model_settings().model_dump(mode="json"),
                "zipvl": None if config is None else config.to_dict(),
            },
        }

    def secret_values(self) -> list[str]:
        """Credential values in the job, for scrubbing them out of any message printed."""
        return secret_values(self.input.storage_options) + secret_values(self.output.storage_options)


# ---------------------------------------------------------------- error messages


def _section_class(path: Iterable[str]) -> type[BaseModel] | None:
    """The section model at a field path of the job (None where the path leaves the models)."""
    cls: type[BaseModel] = JobSpec
    for part in path:
        field = cls.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        cls = annotation
    return cls


def format_validation_error(error: ValidationError) -> list[str]:
    """One ``field.path: message`` line per problem (input values are not echoed)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        loc = [str(part) for part in item["loc"]]
        ctx = item.get("ctx") or {}
        if item["type"] == _FIELD_ERROR:
            loc += [part for part in str(ctx.get("field", "")).split(".") if part]
            message = str(ctx.get("message", item["msg"]))
        elif item["type"] == "extra_forbidden":
            section = _section_class(loc[:-1])
            known = section.model_fields if section is not None else []
            message = _unknown_key(loc[-1], known) if known else f"unknown key {loc[-1]!r}"
        elif item["type"] == "missing":
            message = "required, but missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc) or '(job)'}: {message}")
    return lines


def parse_job(values: dict[str, Any]) -> JobSpec:
    """Validate a job mapping; ``SpecError`` lists every problem with its field path."""
    try:
        return JobSpec.model_validate(values)
    except ValidationError as error:
        raise SpecError(format_validation_error(error)) from None


# ---------------------------------------------------------------- reading job files


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


# ---------------------------------------------------------------- --set overrides

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)")


def parse_override_value(text: str) -> Any:
    """A ``--set`` value as a YAML scalar: null/~/empty, true/false, numbers, else the text.

    Narrower than YAML on purpose: ``yes``/``no`` stay strings, a ``#`` or ``: `` inside a
    prompt is kept. Flow collections (``[0, 1]``, ``{gpu_slot: 2}``) and quoted strings
    (``'007'``) are parsed as YAML.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("", "null", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(stripped):
        return int(stripped)
    if _FLOAT.fullmatch(stripped):
        return float(stripped)
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if stripped[0] in "[{" or quoted:
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or error
            raise ValueError(f"not valid YAML: {problem}") from None
    return text


def _check_override_path(keys: list[str]) -> None:
    """Reject a path the job schema cannot hold, naming the first bad key."""
    cls: type[BaseModel] = JobSpec
    for depth, key in enumerate(keys):
        here = ".".join(keys[:depth])
        if key not in cls.model_fields:
            raise ValueError(_unknown_key(key, cls.model_fields))
        rest = keys[depth + 1:]
        if not rest:
            return
        annotation = cls.model_fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
            continue
        path = f"{here}.{key}" if here else key
        if path == "zipvl":
            known = [f.name for f in dataclasses.fields(ZipVLConfig)] + ["enabled"]
            if rest[0] not in known:
                raise ValueError(_unknown_key(rest[0], known))
            if len(rest) > 1:
                raise ValueError(f"zipvl.{rest[0]} is a value, not a section")
            return
        if path in ("input.storage_options", "output.storage_options", "ray.resources"):
            if len(rest) > 1:
                raise ValueError(f"{path}.{rest[0]} is a value, not a section")
            return
        raise ValueError(f"{path} is a value, not a section")


def _is_text_field(keys: list[str]) -> bool:
    """Whether ``keys`` names a plain text field (a prompt, a path, a name).

    Such values are kept as written: a VQA template like ``{question} Answer briefly.``
    is text, not a YAML flow mapping.
    """
    cls: type[BaseModel] = JobSpec
    for key in keys[:-1]:
        annotation = cls.model_fields[key].annotation if key in cls.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        cls = annotation
    field_info = cls.model_fields.get(keys[-1])
    if field_info is None:
        return False
    annotation = field_info.annotation
    return annotation is str or set(typing.get_args(annotation)) == {str, type(None)}


def _parse_text_override(text: str) -> str | None:
    stripped = text.strip()
    if stripped.lower() in ("null", "~"):
        return None
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    return stripped[1:-1] if quoted else text


def _expand_zipvl(current: Any) -> dict[str, Any]:
    """Turn a ``zipvl:`` preset name into its mapping so one field can be overridden."""
    if current is None:
        current = DEFAULT_ZIPVL_PRESET
    if current is True:
        return {}
    if current is False:
        raise ValueError("zipvl is false (dense); choose a preset first, "
                         "e.g. --set zipvl=default --set zipvl.tau=0.96")
    if isinstance(current, str):
        return dict(presets.load_zipvl_preset(current))
    raise ValueError("zipvl must be a preset name or a mapping to set one of its fields")


def apply_override(values: dict[str, Any], override: str) -> None:
    """Apply one ``key.path=value`` to a raw job mapping, in place.

    Setting ``model.preset`` or ``model.name_or_path`` drops the other, so
    ``--set model.name_or_path=llava-hf/llava-1.5-7b-hf`` switches a preset job to a
    checkpoint in one override.
    """
    key, sep, text = override.partition("=")
    key = key.strip()
    keys = key.split(".")
    if not sep or not key or not all(keys):
        # Only the key part is echoed: a value may be a credential.
        raise SpecError(f"--set {key!r}: expected KEY.PATH=VALUE, "
                        f"e.g. --set resources.workers=2")
    try:
        _check_override_path(keys)
        value = (_parse_text_override(text) if _is_text_field(keys)
                 else parse_override_value(text))
        node = values
        for depth, part in enumerate(keys[:-1]):
            child = node.get(part)
            if depth == 0 and part == "zipvl" and not isinstance(child, dict):
                child = _expand_zipvl(child)
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ValueError(f"{'.'.join(keys[:depth + 1])} in the job file is not a mapping")
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[keys[-1]] = value
    except (ValueError, presets.PresetError) as error:
        # The value is not echoed: it may be a credential.
        raise SpecError(f"--set {key}: {error}") from None
    if keys[:1] == ["model"] and len(keys) == 2 and value is not None:
        other = {"preset": "name_or_path", "name_or_path": "preset"}.get(keys[1])
        if other is not None:
            values["model"].pop(other, None)


def load_job(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a job file. ``name`` defaults to the file's stem."""
    values = read_job_file(path)
    for override in overrides:
        apply_override(values, override)
    if "name" not in values:
        values["name"] = Path(path).stem
    return parse_job(values)
