"""The job's ``zipvl:`` value: a preset name or path, a mapping, ``true``, or ``false`` (dense).

Resolved to a ``zipvl.ZipVLConfig`` once per validation (``JobSpec`` calls
``resolve_zipvl`` after the other fields); problems name the field under ``zipvl``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic_core import PydanticCustomError

from pipeline import presets
from pipeline.spec_errors import field_error, unknown_key
from zipvl.config import ZipVLConfig

DEFAULT_ZIPVL_PRESET = "default"
# What a zipvl: mapping may hold: ZipVLConfig's fields, and enabled (false: dense).
ZIPVL_KEYS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(ZipVLConfig)), "enabled")


def _zipvl_problem(field: str, message: str, origin: str | None) -> PydanticCustomError:
    where = f" (in preset {origin})" if origin else ""
    return field_error(field, message + where)


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
            raise field_error("", str(error)) from None
    mapping = dict(value)
    enabled = mapping.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise _zipvl_problem("enabled", "must be true or false", origin)
    if not enabled:
        if mapping:
            raise _zipvl_problem("enabled", "false means dense (no ZipVL); remove the other "
                                 f"keys ({', '.join(sorted(map(str, mapping)))})", origin)
        return None
    for key in mapping:
        if key not in ZIPVL_KEYS:
            raise _zipvl_problem(str(key), unknown_key(str(key), ZIPVL_KEYS), origin)
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


def check_zipvl_value(value: Any) -> bool | str | dict[str, Any]:
    # Its shape only: JobSpec resolves it once, after the other fields (_cross_checks).
    if isinstance(value, (bool, dict)) or (isinstance(value, str) and value.strip()):
        return value
    raise field_error("", "must be a preset name (configs/zipvl), a path to a preset file, "
                           "a mapping of ZipVLConfig fields, or false for dense")
