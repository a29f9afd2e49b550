"""Attention kernels behind ZipVL: torch SDPA (the tested default) and optional flash-attn."""

from zipvl.backends.flash import flash_attention_available, use_flash

__all__ = ["flash_attention_available", "use_flash"]
