"""Optional flash-attn kernels for ZipVL's ragged shapes (FlashAttention-2, Dao, arXiv 2307.08691).

Two kernels fit ZipVL's shapes without padding: ``flash_attn_varlen_func`` runs
the gathered kept sequences of a whole batch as one packed call (each
(sample, KV head) pair is one sequence of its ``p`` kept tokens read by the ``G``
query heads of its group), and ``flash_attn_with_kvcache`` with ``cache_seqlens``
reads the ragged left-aligned compressed cache while decoding. They are used only
on CUDA half-precision tensors with flash-attn importable; torch SDPA (in
``zipvl.sparse_attention``) is the default everywhere else.

The packing functions take the kernel as an argument so their bookkeeping can be
checked against SDPA on machines without flash-attn; the kernels themselves are
only exercised where flash-attn runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from functools import cache

import torch

from zipvl.host_transfer import to_device

FLASH_DTYPES = (torch.float16, torch.bfloat16)

VarlenKernel = Callable[..., torch.Tensor]


@cache
def _flash_module():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    return importlib.import_module("flash_attn")


def flash_attention_available() -> bool:
    """flash-attn is importable and a CUDA device is present."""
    return _flash_module() is not None and torch.cuda.is_available()


def check_flash_backend(backend: str, device: torch.device | None = None) -> None:
    """Raise early (at ``enable``) when ``backend="flash"`` cannot run here."""
    if backend != "flash":
        return
    if _flash_module() is None:
        raise ValueError("ZipVLConfig.backend='flash' needs the flash-attn package "
                         "(pip install 'zipvl-batch[gpu]'); use backend='auto' or 'sdpa'")
    if device is not None and device.type != "cuda":
        raise ValueError(f"ZipVLConfig.backend='flash' needs a CUDA model, got device {device}")


def use_flash(backend: str, tensor: torch.Tensor) -> bool:
    """Whether to run flash-attn for ``tensor`` under ``backend`` (``auto`` / ``sdpa`` / ``flash``)."""
    if backend == "sdpa":
        return False
    usable = tensor.is_cuda and tensor.dtype in FLASH_DTYPES and _flash_module() is not None
    if backend == "flash" and not usable:
        raise RuntimeError(
            "ZipVLConfig.backend='flash' needs flash-attn and CUDA float16/bfloat16 tensors, got "
            f"{tensor.dtype} on {tensor.device} (flash-attn importable: {_flash_module() is not None})")
    return usable


def flash_varlen_causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        cu_seqlens: torch.Tensor, max_seqlen: int, scale: float) -> torch.Tensor:
    """flash-attn's packed causal attention: ``query [T, Hq, d]``, ``key/value [T, Hk, d]``."""
    return _flash_module().flash_attn_varlen_func(
        query, key, value, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen, softmax_scale=scale, causal=True)


def _cumulative(lengths: list[int], device: torch.device) -> torch.Tensor:
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return to_device(offsets, device)


def gathered_prefill(queries: list[torch.Tensor], keys: list[torch.Tensor],
                     values: list[torch.Tensor], kept: list[torch.Tensor], scale: float,
                     kernel: VarlenKernel = flash_varlen_causal) -> list[torch.Tensor]:
    """ZipVL ``qkv`` prefill for a batch in one packed kernel call.

    Per sample: ``queries[i] [H, n_i, d]``, ``keys[i]/values[i] [Hk, n_i, d]``,
    ``kept[i] [Hk, p_i]`` sorted. Returns ``[H, n_i, d]`` per sample with zero rows
    outside the kept set, like ``sparse_prefill_attention(..., mode="qkv")``.
    """
    packed_q, packed_k, packed_v, lengths = [], [], [], []
    for query, key, value, kept_positions in zip(queries, keys, values, kept):
        num_heads, num_tokens, head_dim = query.shape
        num_kv_heads, num_kept = kept_positions.shape
        group = num_heads // num_kv_heads
        index = kept_positions[:, None, :, None].expand(num_kv_heads, group, num_kept, head_dim)
        grouped = query.view(num_kv_heads, group, num_tokens, head_dim).gather(2, index)
        packed_q.append(grouped.permute(0, 2, 1, 3).reshape(num_kv_heads * num_kept, group, head_dim))
        token_index = kept_positions[:, :, None].expand(-1, -1, head_dim)
        packed_k.append(key.gather(1, token_index).reshape(num_kv_heads * num_kept, 1, head_dim))
        packed_v.append(value.gather(1, token_index).reshape(num_kv_heads * num_kept, 1, head_dim))
        lengths.extend([num_kept] * num_kv_heads)
    device = queries[0].device
    packed_out = kernel(torch.cat(packed_q), torch.cat(packed_k), torch.cat(packed_v),
                        _cumulative(lengths, device), max(lengths, default=0), scale)
    outputs, start = [], 0
    for query, kept_positions in zip(queries, kept):
        num_heads, num_tokens, head_dim = query.shape
        num_kv_heads, num_kept = kept_positions.shape
        group = num_heads // num_kv_heads
        rows = packed_out[start:start + num_kv_heads * num_kept]
        start += num_kv_heads * num_kept
        kept_out = rows.view(num_kv_heads, num_kept, group, head_dim).permute(0, 2, 1, 3)
        output = query.new_zeros(num_kv_heads, group, num_tokens, head_dim)
        index = kept_positions[:, None, :, None].expand(num_kv_heads, group, num_kept, head_dim)
        output.scatter_(2, index, kept_out.to(query.dtype))
        outputs.append(output.view(num_heads, num_tokens, head_dim))
    return outputs


def dense_prefill(queries: list[torch.Tensor], keys: list[torch.Tensor],
                  values: list[torch.Tensor], scale: float,
                  kernel: VarlenKernel = flash_varlen_causal) -> list[torch.Tensor]:
    """Dense causal prefill of unpadded samples in one packed call: ``[H, n_i, d]`` per sample."""
    lengths = [query.shape[1] for query in queries]
    packed_out = kernel(torch.cat([q.transpose(0, 1) for q in queries]),
                        torch.cat([k.transpose(0, 1) for k in keys]),
                        torch.cat([v.transpose(0, 1) for v in values]),
                        _cumulative(lengths, queries[0].device), max(lengths, default=0), scale)
    return [rows.transpose(0, 1) for rows in torch.split(packed_out, lengths)]


def kvcache_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                   lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Decoding over the ragged compressed cache: ``query [b, H, q, d]`` -> ``[b, H, q, d]``.

    ``key_cache/value_cache [b, Hk, capacity, d]`` hold ``lengths[b]`` valid slots whose
    last ``q`` are the new tokens (flash aligns causal masks bottom-right). The
    transposed views keep a unit last stride, which is all the kernel requires.
    """
    output = _flash_module().flash_attn_with_kvcache(
        query.transpose(1, 2), key_cache.transpose(1, 2), value_cache.transpose(1, 2),
        cache_seqlens=lengths.to(device=query.device, dtype=torch.int32),
        softmax_scale=scale, causal=True)
    return output.transpose(1, 2)
