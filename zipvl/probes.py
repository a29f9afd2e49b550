"""Probe positions: the queries whose attention scores every token (ZipVL step 1).

ZipVL (He et al., arXiv 2410.08584, supplementary A) scores tokens with the last
``R`` queries plus ``S`` queries drawn at random from the rest; ``shared/ZIPVL.md``
step 1 fixes the details (without replacement, seeded from ``(seed, layer)``).
"""

from __future__ import annotations

import torch

from zipvl.host_transfer import to_device

# A large prime keeps (seed, layer) pairs from colliding for any realistic layer count.
_SEED_STRIDE = 1_000_003


def probe_seed(seed: int, layer_idx: int) -> int:
    """The generator seed for one layer, deterministic in ``(seed, layer_idx)``."""
    return seed * _SEED_STRIDE + layer_idx


def probe_positions(num_tokens: int, num_recent: int, num_random: int, seed: int,
                    layer_idx: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Sorted probe positions ``LongTensor[P]`` for a sequence of ``num_tokens`` tokens.

    The last ``R = min(num_recent, n)`` positions plus ``S = min(num_random, n - R)``
    positions drawn uniformly without replacement from ``[0, n - R)``. When
    ``n <= R + S`` every position is a probe, so the scores are exact.
    """
    if num_tokens < 0 or num_recent < 0 or num_random < 0:
        raise ValueError("num_tokens, num_recent and num_random must be non-negative")
    num_recent = min(num_recent, num_tokens)
    num_random = min(num_random, num_tokens - num_recent)
    num_rest = num_tokens - num_recent
    if num_random >= num_rest:
        return torch.arange(num_tokens, dtype=torch.long, device=device)
    recent = torch.arange(num_rest, num_tokens, dtype=torch.long)
    if num_random > 0:
        # Drawn on CPU so the same seed gives the same probes on every device.
        generator = torch.Generator(device="cpu")
        generator.manual_seed(probe_seed(seed, layer_idx))
        drawn = torch.randperm(num_rest, generator=generator)[:num_random]
        positions = torch.cat([torch.sort(drawn).values, recent])
    else:
        positions = recent
    return to_device(positions, device)
