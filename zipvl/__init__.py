"""ZipVL: adaptive sparse prefill and a compressed KV cache for (vision-)language models."""

from zipvl.config import ZipVLConfig

__all__ = ["ZipVLConfig"]
