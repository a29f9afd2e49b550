"""ZipVL: adaptive sparse prefill and a compressed KV cache for (vision-)language models.

ZipVL (He et al., "ZipVL: Efficient Large Vision-Language Models with Dynamic
Token Sparsification", arXiv 2410.08584, ICCV 2025) as specified in
``shared/ZIPVL.md``, patched into Hugging Face transformers models::

    import zipvl
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.975))
    output_ids = model.generate(**inputs, max_new_tokens=32)
    print(zipvl.stats(model).kept_ratio.mean())
    zipvl.disable(model)
"""

from zipvl.cache import ZipVLCache
from zipvl.config import ZipVLConfig
from zipvl.patch import SUPPORTED_MODEL_TYPES, disable, enable, stats
from zipvl.stats import ZipVLStats

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ZipVLCache",
    "ZipVLConfig",
    "ZipVLStats",
    "disable",
    "enable",
    "stats",
]
