"""One string form for every row id, whatever the input column's type.

The output's ``id`` column is a string, and resume matches the input's ids against
it, so the decode stage (which writes ids), ``input.limit`` and the resume filter
(which match them) must all spell an id the same way, or a rerun would do the row
again and write it twice. The form is Arrow's cast to string (``1.0`` -> ``"1"``,
``True`` -> ``"true"``, timestamps ``2024-01-01 12:00:00.000000``); binary ids are
their UTF-8 text, or ``hex:<digits>`` when they are not text. Nulls stay null.
"""

from __future__ import annotations

import pyarrow as pa

HEX_PREFIX = "hex:"


def canonical_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as a string array in the canonical id form."""
    if isinstance(values, pa.ChunkedArray):
        chunks = [canonical_ids(chunk) for chunk in values.chunks]
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type) \
            or pa.types.is_fixed_size_binary(values.type):
        try:
            return values.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8: spell the bytes out
            return pa.array([None if value is None else _text_or_hex(value)
                             for value in values.to_pylist()], pa.string())
    return values.cast(pa.string())


def _text_or_hex(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return HEX_PREFIX + value.hex()
