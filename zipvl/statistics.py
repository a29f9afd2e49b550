"""What the latest ZipVL prefill kept: per-layer, per-sample token counts and cache bytes.

``zipvl.stats(model)`` returns a ``ZipVLStats`` (contract in ``docs/DESIGN.md``).
The attention function fills a ``PrefillRecord`` layer by layer during prefill;
the forward pre-hook starts a new record whenever a prefill begins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ZipVLStats:
    """The most recent prefill of a patched model.

    kept_ratio: ``[num_layers, batch]`` float, kept / unpadded prompt tokens (1.0 for
        dense layers and for empty rows, which drop nothing).
    kept_tokens: ``[num_layers, batch]`` int, tokens kept per layer and sample.
    prompt_tokens: ``[batch]`` int, unpadded prompt tokens per sample.
    cache_bytes: K/V bytes held after prefill (kept tokens x Hk x d x 2 x element size).
    dense_cache_bytes: K/V bytes a dense cache would hold for the same prompts.
    """

    kept_ratio: np.ndarray
    kept_tokens: np.ndarray
    prompt_tokens: np.ndarray
    cache_bytes: int
    dense_cache_bytes: int

    @property
    def mean_kept_ratio(self) -> np.ndarray:
        """``[batch]``: kept ratio averaged over layers, one number per sample."""
        if self.kept_ratio.size == 0:
            return np.zeros(self.prompt_tokens.shape, dtype=np.float64)
        return self.kept_ratio.mean(axis=0)


@dataclass
class PrefillRecord:
    """Filled by the attention function, one ``add_layer`` call per decoder layer."""

    prompt_tokens: list[int] = field(default_factory=list)
    kept_tokens: dict[int, list[int]] = field(default_factory=dict)
    bytes_per_token: dict[int, int] = field(default_factory=dict)

    def add_layer(self, layer_idx: int, kept_tokens: list[int], prompt_tokens: list[int],
                  bytes_per_token: int) -> None:
        self.prompt_tokens = list(prompt_tokens)
        self.kept_tokens[layer_idx] = list(kept_tokens)
        self.bytes_per_token[layer_idx] = bytes_per_token

    def to_stats(self) -> ZipVLStats:
        layers = sorted(self.kept_tokens)
        batch = len(self.prompt_tokens)
        kept = np.array([self.kept_tokens[i] for i in layers], dtype=np.int64).reshape(len(layers), batch)
        prompt = np.array(self.prompt_tokens, dtype=np.int64)
        safe_prompt = np.maximum(prompt, 1)[None, :]
        ratio = np.where(prompt[None, :] > 0, kept / safe_prompt, 1.0).astype(np.float64)
        cache_bytes = sum(int(kept[row].sum()) * self.bytes_per_token[i] for row, i in enumerate(layers))
        dense_bytes = sum(int(prompt.sum()) * self.bytes_per_token[i] for i in layers)
        return ZipVLStats(kept_ratio=ratio, kept_tokens=kept, prompt_tokens=prompt,
                          cache_bytes=cache_bytes, dense_cache_bytes=dense_bytes)
