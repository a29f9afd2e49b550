"""Attention in parts: gathered key sets, and partial results merged by log-sum-exp.

The pieces the sparse prefill kernels (``sparse_attention``, ``kept_query_attention``)
build on: a gather of kept tokens, the CPU flash-attention op that also returns the
log-sum-exp, and the FlashAttention rescaling identity (Dao et al., arXiv
2205.14135, Sec. 3.1) that merges attention over two disjoint key sets exactly.
"""

from __future__ import annotations

import torch

_FLASH_CPU_OP = "_scaled_dot_product_flash_attention_for_cpu"


def gather_tokens(tensor: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``tensor [Hk, n, d]`` at ``kept [Hk, p]`` -> ``[Hk, p, d]``."""
    return tensor.gather(1, kept[:, :, None].expand(-1, -1, tensor.shape[-1]))


def has_flash_with_lse(query: torch.Tensor) -> bool:
    """Whether the CPU flash-attention op that also returns the log-sum-exp can run here.

    Public SDPA returns no log-sum-exp, and the CUDA kernels behind it take no
    partial results, so the split kernels are CPU-only; the op is private
    (``aten::_scaled_dot_product_flash_attention_for_cpu``, used as of torch 2.13),
    hence the ``hasattr`` guard: without it the fused-mask path runs.
    """
    return query.device.type == "cpu" and hasattr(torch.ops.aten, _FLASH_CPU_OP)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        additive_mask: torch.Tensor | None,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU flash attention ``[B, h, q, d]`` and its natural log-sum-exp ``[B, h, q]``.

    ``key``/``value`` carry the same head count as ``query`` (stride-0 expanded views
    are read in place). Measured on torch 2.13: the op refuses a boolean mask (it takes
    an additive one of the query dtype), crashes the process (SIGFPE) on zero queries
    or zero keys, and gives a fully masked row output 0 with log-sum-exp 0, not
    ``-inf``; callers pass none of those.
    """
    operator = getattr(torch.ops.aten, _FLASH_CPU_OP)
    output, lse = operator(query, key, value, 0.0, False, attn_mask=additive_mask, scale=scale)
    return output, lse


def merge_partial_attention(output_a: torch.Tensor, lse_a: torch.Tensor,
                             output_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from each set's output and LSE.

    ``(e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b) = lerp(out_b, out_a,
    sigmoid(lse_a - lse_b))``: the softmax-rescaling identity of FlashAttention (Dao
    et al., arXiv 2205.14135, Sec. 3.1) in the form that needs no max. Computed in the
    LSE dtype (float32 for low-precision inputs): the merge adds one rounding.
    """
    weight_a = torch.sigmoid(lse_a - lse_b).unsqueeze(-1)
    return torch.lerp(output_b.to(weight_a.dtype), output_a.to(weight_a.dtype), weight_a)
