"""How the job schema reports a problem: a message with the field path it belongs to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic_core import PydanticCustomError

# Error type carrying a message and a field path relative to where it is raised, so
# checks that span fields (model validators) can still name the exact field.
FIELD_ERROR = "spec_field"


def field_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(FIELD_ERROR, "{message}", {"message": message, "field": field})


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    return f"unknown key {key!r}{_suggest(key, known)}; known keys: {', '.join(known)}"
