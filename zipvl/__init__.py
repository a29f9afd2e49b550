"""ZipVL: adaptive sparse prefill and a compressed KV cache for (vision-)language models.

ZipVL (He et al., "ZipVL: Efficient Large Vision-Language Models with Dynamic
Token Sparsification", arXiv 2410.08584, ICCV 2025) as specified in
``shared/ZIPVL.md``, patched into Hugging Face transformers models::

    import zipvl
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.995))
    # The explicit cache is optional (the patch swaps one in), and version-proof:
    output_ids = model.generate(**inputs, **zipvl.cache_kwargs(model), max_new_tokens=32)
    print(zipvl.stats(model).kept_ratio.mean())
    zipvl.disable(model)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zipvl.config import ZipVLConfig
from zipvl.strategies import AdaptiveBudget, FixedRatio, SelectionStrategy, SinkAndRecent

if TYPE_CHECKING:
    from zipvl.cache import ZipVLCache
    from zipvl.patch import (
        SUPPORTED_MODEL_TYPES,
        cache_keyword,
        cache_kwargs,
        disable,
        enable,
        mark_media,
        returned_cache,
        stats,
    )
    from zipvl.statistics import ZipVLStats

# The integration imports transformers (seconds cold); the config alone must stay cheap,
# since job-file validation needs only ZipVLConfig.
_LAZY = {
    "ZipVLCache": "zipvl.cache",
    "SUPPORTED_MODEL_TYPES": "zipvl.patch",
    "cache_keyword": "zipvl.patch",
    "cache_kwargs": "zipvl.patch",
    "disable": "zipvl.patch",
    "enable": "zipvl.patch",
    "mark_media": "zipvl.patch",
    "returned_cache": "zipvl.patch",
    "stats": "zipvl.patch",
    "ZipVLStats": "zipvl.statistics",
}

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "AdaptiveBudget",
    "FixedRatio",
    "SelectionStrategy",
    "SinkAndRecent",
    "ZipVLCache",
    "ZipVLConfig",
    "ZipVLStats",
    "cache_keyword",
    "cache_kwargs",
    "disable",
    "enable",
    "mark_media",
    "returned_cache",
    "stats",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'zipvl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
