"""``--set key.path=value``: one override of a raw job mapping, checked against the schema.

Values are YAML scalars, narrowed on purpose (``yes``/``no`` stay strings, a ``#`` in a
prompt is kept), and text fields (prompts, paths, names) are taken as written. The
path is checked against the job schema (``spec.section_at``) before anything is set,
and no message echoes a value: it may be a credential.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

from pipeline import presets
from pipeline.errors import SpecError
from pipeline.spec import section_at
from pipeline.spec_errors import unknown_key
from pipeline.zipvl_section import DEFAULT_ZIPVL_PRESET, ZIPVL_KEYS

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
    for depth, key in enumerate(keys):
        section = section_at(keys[:depth])
        if section is None:  # keys[depth - 1] is a value: only a few values have keys
            _check_keys_inside_value(".".join(keys[:depth]), keys[depth:])
            return
        if key not in section.model_fields:
            raise ValueError(unknown_key(key, section.model_fields))


def _check_keys_inside_value(path: str, rest: list[str]) -> None:
    if path == "zipvl":
        if rest[0] not in ZIPVL_KEYS:
            raise ValueError(unknown_key(rest[0], ZIPVL_KEYS))
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
    section = section_at(keys[:-1])
    field_info = section.model_fields.get(keys[-1]) if section is not None else None
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


