"""The job file: a pydantic model validated once at the edge, trusted inside.

A job file (YAML) has the sections ``input``, ``task``, ``video``, ``model``, ``zipvl``,
``generation``, ``resources``, ``output`` and ``ray`` (see ``jobs/captions.yaml`` for
a commented example and issue 3 for the requirements). Every section forbids unknown
keys, so a typo is an error naming the key instead of a silently ignored setting.

``job_file.load_job(path, overrides)`` reads the file, applies ``--set key.path=value``
overrides to the raw mapping (``overrides``), then validates here. Every problem becomes a
``SpecError`` whose lines start with the field path (``zipvl.tau: must be in
(0, 1], got 1.5``). Presets (``configs/models``, ``configs/zipvl``) are resolved
during validation, so a spec that loaded has a usable model reference and ZipVL
config: ``spec.model_settings()`` and ``spec.zipvl_config()``.

``spec.model_dump()`` is the job as run, for ``.zipvl/report.json``: credentials in
``storage_options`` (``access_key``, ``secret_key``, ``session_token``) are redacted there and hidden
from ``repr``; the live values stay on the attributes for the storage layer.

(About 400 lines, over the project's ~350: it is the one schema a user's job file is
checked against, eight section classes and their cross-field checks; the loader,
``--set``, the ``zipvl:`` resolution and the error wording live in their own modules.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, Literal

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
from pipeline.families import reads_native_video
from pipeline.presets import Dtype, Family, FamilyOrAuto
from pipeline.redaction import redact, secret_values
from pipeline.spec_errors import FIELD_ERROR, field_error, unknown_key
from pipeline.storage import StorageOptions
from pipeline.video_section import VideoSection
from pipeline.zipvl_section import DEFAULT_ZIPVL_PRESET, check_zipvl_value, resolve_zipvl
from zipvl.config import ZipVLConfig

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
QUESTION_PLACEHOLDER = "{question}"
DEFAULT_VQA_PROMPT = QUESTION_PLACEHOLDER
# Above the sample's 3 broken images in 40 (7.5%); a real dataset with more than one
# row in ten failing is more likely a wrong column or path than bad media.
DEFAULT_MAX_ERROR_FRACTION = 0.1


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
        raise field_error("", "must be a mapping of S3 options: "
                               + ", ".join(StorageOptions.model_fields))
    try:
        StorageOptions.model_validate(value)
    except ValidationError as error:
        item = error.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            raise field_error(loc, unknown_key(loc, StorageOptions.model_fields)) from None
        raise field_error(loc, item["msg"].removeprefix("Value error, ")
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
            raise field_error("image", "map at least one of 'image' or 'video' to an input column")
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

    @model_validator(mode="before")
    @classmethod
    def _default_prompt(cls, values: Any) -> Any:
        if isinstance(values, dict) and "video_frames" in values:
            raise field_error("video_frames", "moved: set video.num_frames (or video.fps) instead")
        if isinstance(values, dict) and values.get("prompt") is None:
            values = dict(values)
            is_vqa = values.get("type") == "vqa"
            values["prompt"] = DEFAULT_VQA_PROMPT if is_vqa else DEFAULT_CAPTION_PROMPT
        return values

    @model_validator(mode="after")
    def _template_fits_type(self) -> TaskSection:
        has_placeholder = QUESTION_PLACEHOLDER in self.prompt
        if self.type == "vqa" and not has_placeholder:
            raise field_error("prompt", f"a vqa prompt is a template that must contain "
                                         f"{QUESTION_PLACEHOLDER} (where the row's question goes)")
        if self.type == "caption" and has_placeholder:
            raise field_error("prompt", f"{QUESTION_PLACEHOLDER} is only filled for task.type vqa")
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
            raise field_error("preset", "set exactly one of 'preset' (a file in configs/models) "
                                         "or 'name_or_path' (a hub id or local path)")
        settings: dict[str, Any] = {"preset": self.preset, "tiny": None, "name_or_path": None}
        if self.preset is not None:
            try:
                preset = presets.load_model_preset(self.preset)
            except presets.PresetError as error:
                raise field_error("preset", str(error)) from None
            except ValidationError as error:
                where = presets.find_preset("models", self.preset)
                raise field_error("preset", f"{where}: "
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
                raise field_error("family", f"{settings['family']!r} contradicts the tiny "
                                             f"{settings['tiny']} model of preset {self.preset!r}")
            settings["family"] = settings["tiny"]
        if settings["name_or_path"] is not None:
            settings["name_or_path"] = _local_or_hub(settings["name_or_path"])
        self._settings = ModelSettings(**settings)
        return self


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
    raise field_error("", f"must be 'auto' or a number >= 0, got {value!r}")


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
    # A run's lock on the output folder lapses this long after its last heartbeat
    # (see pipeline/output_lock.py): how long a crashed run on another machine blocks a rerun.
    lock_ttl_seconds: float = Field(default=60.0, ge=5)
    # Resume an output whose rows came from a different model, prompt or config
    # (pipeline/fingerprint.py); off: such a run refuses.
    allow_job_change: bool = False

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
                    raise field_error(name, "only applies to a local Ray (ray.address: null)")
        return self


class JobSpec(_Section):
    """A validated job. Build it with ``load_job`` (files) or ``parse_job`` (mappings)."""

    name: str = Field(default="job", min_length=1)
    input: InputSection
    task: TaskSection = Field(default_factory=TaskSection)
    video: VideoSection = Field(default_factory=VideoSection)
    model: ModelSection
    zipvl: bool | str | dict[str, Any] = DEFAULT_ZIPVL_PRESET
    generation: GenerationSection = Field(default_factory=GenerationSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    output: OutputSection
    ray: RaySection = Field(default_factory=RaySection)

    _zipvl_config: ZipVLConfig | None = PrivateAttr(default=None)

    _zipvl_value = field_validator("zipvl", mode="plain")(check_zipvl_value)

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        columns = self.input.columns
        if self.task.type == "vqa" and columns.prompt is None:
            raise field_error("input.columns.prompt",
                               "task.type vqa needs the input column holding the question")
        if self.task.type == "caption" and columns.prompt is not None:
            raise field_error("input.columns.prompt",
                               "only task.type vqa reads a prompt column; remove it for caption")
        family = self.model_settings().family
        if family != "auto":  # otherwise the checkpoint names it: checked when the job plans
            try:
                reads_native_video(self.video.mode, family)
            except ValueError as error:
                raise field_error("video.mode", str(error)) from None
        if self.input.path == self.output.path:
            raise field_error("output.path", "must differ from input.path")
        try:
            self._zipvl_config = resolve_zipvl(self.zipvl)
        except PydanticCustomError as error:  # its field path is relative to zipvl
            field = str((error.context or {}).get("field", ""))
            raise field_error(f"zipvl.{field}" if field else "zipvl",
                               str((error.context or {}).get("message", error))) from None
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

    def without_output_credentials(self) -> JobSpec:
        """This job without the output's storage options: what the model actors get (they
        never touch the output), so its keys travel in no task."""
        return self.model_copy(update={"output": self.output.model_copy(update={"storage_options": {}})})

    def secret_values(self) -> list[str]:
        """Credential values in the job, for scrubbing them out of any message printed."""
        return secret_values(self.input.storage_options) + secret_values(self.output.storage_options)


# ---------------------------------------------------------------- error messages


def section_at(path: Iterable[str]) -> type[BaseModel] | None:
    """The section model at a field path of the job (None where the path leaves the
    models): the one walk of the schema tree, for error messages and ``--set``."""
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
        if item["type"] == FIELD_ERROR:
            loc += [part for part in str(ctx.get("field", "")).split(".") if part]
            message = str(ctx.get("message", item["msg"]))
        elif item["type"] == "extra_forbidden":
            section = section_at(loc[:-1])
            known = section.model_fields if section is not None else []
            message = unknown_key(loc[-1], known) if known else f"unknown key {loc[-1]!r}"
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
