"""How many tokens a layer keeps (ZipVL step 3).

The adaptive budget is ZipVL's adaptive ratio (He et al., arXiv 2410.08584,
Eq. 6): the fewest tokens whose accumulated probe attention holds ``tau`` of the
total mass. ``fixed_budget`` is the paper's fixed-ratio ablation.
"""

from __future__ import annotations

import math

import torch

# ratio * n is rounded up; this slack keeps 0.5 * 10 = 5.000000001 from becoming 6.
_RATIO_SLACK = 1e-9


def _clamp_budget(budget: int, keep_last: int, num_tokens: int) -> int:
    return max(1, min(max(budget, keep_last), num_tokens))


def adaptive_budget(accumulated: torch.Tensor, total_mass: float | torch.Tensor, tau: float,
                    keep_last: int) -> int:
    """``p = min{k : sum of the k largest scores >= tau * M}``, clamped to ``[keep_last, n]``.

    ``accumulated [n]`` holds each key's summed probe attention and ``total_mass``
    is ``M = H * |P|``, or a 0-d tensor where ``M`` is itself a device value (the mass
    on some of the keys, ``zipvl.text_tokens``). ``tau >= 1`` keeps every token:
    rounding can leave the cumulative sum just short of ``M``, so it is not left to
    the arithmetic.
    """
    num_tokens = accumulated.numel()
    if num_tokens == 0:
        return 0
    if tau >= 1.0:
        return num_tokens
    ranked = torch.sort(accumulated.detach().to(torch.float64), descending=True).values
    cumulative = torch.cumsum(ranked, dim=0)
    # Count of prefixes still below the threshold; the next one reaches it. The threshold
    # goes in as a Python scalar (no host-to-device copy) or stays where it was computed;
    # the budget is a shape, so reading it back is the one host synchronisation a
    # layer's selection needs.
    if isinstance(total_mass, torch.Tensor):
        threshold = (tau * total_mass).to(cumulative.dtype).reshape(1)
    else:
        threshold = tau * float(total_mass)
    budget = int(torch.searchsorted(cumulative, threshold, side="left").item()) + 1
    return _clamp_budget(min(budget, num_tokens), keep_last, num_tokens)


def fixed_budget(num_tokens: int, ratio: float, keep_last: int) -> int:
    """``ceil(ratio * n)`` clamped to ``[keep_last, n]`` (at least 1); 0 for an empty sequence."""
    if num_tokens == 0:
        return 0
    return _clamp_budget(math.ceil(ratio * num_tokens - _RATIO_SLACK), keep_last, num_tokens)
