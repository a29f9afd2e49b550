"""Selection strategies: which prompt tokens a layer keeps (ZipVL steps 1-5).

``ZipVLConfig.strategy`` holds one. The default, ``AdaptiveBudget``, is the
paper's; ``FixedRatio`` is its fixed-ratio ablation and ``SinkAndRecent`` the
StreamingLLM baseline. A strategy is an object, not a flag, in the spirit of
NVIDIA kvpress's presses: a new selection is a new small class, and the
attention code that applies it does not change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zipvl.strategies.adaptive import AdaptiveBudget
from zipvl.strategies.base import SelectionStrategy
from zipvl.strategies.fixed_ratio import FixedRatio
from zipvl.strategies.sink_and_recent import SinkAndRecent

STRATEGIES: dict[str, type[SelectionStrategy]] = {
    strategy.name: strategy for strategy in (AdaptiveBudget, FixedRatio, SinkAndRecent)
}


def strategy_from_value(value: Any) -> SelectionStrategy:
    """A strategy from a config value: an instance, a name, or ``{name: ..., <fields>}``.

    Raises ``ValueError`` naming what is wrong (an unknown name or field, a bad value).
    """
    if isinstance(value, SelectionStrategy):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError(f"must be a strategy name ({', '.join(STRATEGIES)}) or a mapping with "
                         f"'name' and the strategy's fields, got {value!r}")
    fields = dict(value)
    name = fields.pop("name")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    known = {field.name: field for field in dataclasses.fields(strategy)}
    unknown = sorted(set(fields) - set(known))
    missing = sorted(field_name for field_name, field in known.items() if field_name not in fields
                     and field.default is dataclasses.MISSING
                     and field.default_factory is dataclasses.MISSING)
    if unknown or missing:
        raise ValueError(f"{name}: " + "; ".join(
            ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else []))
            + f" (fields: {', '.join(known) or 'none'})")
    return strategy(**fields)


__all__ = ["STRATEGIES", "AdaptiveBudget", "FixedRatio", "SelectionStrategy", "SinkAndRecent",
           "strategy_from_value"]
