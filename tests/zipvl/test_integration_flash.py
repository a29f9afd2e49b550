"""The flash-attn backend against torch SDPA.

The packing around ``flash_attn_varlen_func`` (one sequence per sample and KV
head) runs everywhere with a plain-torch stand-in for the kernel's documented
contract; the kernels themselves are compared with SDPA only where flash-attn
and CUDA exist (skipped otherwise).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zipvl
from zipvl.backends import flash
from zipvl.sparse_attention import (
    decode_attention,
    dense_causal_attention,
    sparse_prefill_attention,
)

needs_flash = pytest.mark.skipif(not flash.flash_attention_available(),
                                 reason="needs CUDA and flash-attn")


def _varlen_stand_in(query, key, value, cu_seqlens, max_seqlen, scale):
    """Causal attention per packed sequence, GQA by head groups (flash_attn_varlen_func's contract)."""
    output = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            output[start:end] = F.scaled_dot_product_attention(
                query[start:end].transpose(0, 1)[None], key[start:end].transpose(0, 1)[None],
                value[start:end].transpose(0, 1)[None], is_causal=True, scale=scale,
                enable_gqa=True)[0].transpose(0, 1)
    return output


def _samples(lengths, num_heads=4, num_kv_heads=2, head_dim=8, dtype=torch.float32,
             device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for length in lengths:
        query = torch.randn(num_heads, length, head_dim, generator=generator)
        key = torch.randn(num_kv_heads, length, head_dim, generator=generator)
        value = torch.randn(num_kv_heads, length, head_dim, generator=generator)
        kept = torch.stack([torch.sort(torch.randperm(length, generator=generator)[: length // 2 + 1])
                            .values for _ in range(num_kv_heads)])
        samples.append(tuple(t.to(device=device, dtype=dtype) for t in (query, key, value))
                       + (kept.to(device),))
    return samples


def test_gathered_packing_matches_sdpa_qkv():
    samples = _samples([9, 1, 23])
    queries, keys, values, kept = (list(column) for column in zip(*samples))
    packed = flash.gathered_prefill(queries, keys, values, kept, 0.3, kernel=_varlen_stand_in)
    for output, (query, key, value, kept_positions) in zip(packed, samples):
        expected = sparse_prefill_attention(query, key, value, kept_positions, "qkv", 1, 0.3)
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_dense_packing_matches_sdpa():
    samples = _samples([5, 17])
    queries, keys, values, _ = (list(column) for column in zip(*samples))
    packed = flash.dense_prefill(queries, keys, values, 0.25, kernel=_varlen_stand_in)
    for output, (query, key, value, _) in zip(packed, samples):
        torch.testing.assert_close(output, dense_causal_attention(query, key, value, 0.25),
                                   rtol=1e-5, atol=1e-6)


def test_sdpa_backend_never_uses_flash():
    tensor = torch.zeros(1)
    assert not flash.use_flash("sdpa", tensor)
    assert not flash.use_flash("auto", tensor)
    with pytest.raises(RuntimeError, match="flash"):
        flash.use_flash("flash", tensor)


@needs_flash
def test_flash_prefill_kernels_match_sdpa():
    samples = _samples([37, 5, 64], head_dim=64, dtype=torch.float16, device="cuda")
    queries, keys, values, kept = (list(column) for column in zip(*samples))
    gathered = flash.gathered_prefill(queries, keys, values, kept, 0.125)
    dense = flash.dense_prefill(queries, keys, values, 0.125)
    for sparse_out, dense_out, (query, key, value, kept_positions) in zip(gathered, dense, samples):
        expected = sparse_prefill_attention(query, key, value, kept_positions, "qkv", 1, 0.125)
        torch.testing.assert_close(sparse_out, expected, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(dense_out, dense_causal_attention(query, key, value, 0.125),
                                   rtol=2e-3, atol=2e-3)


@needs_flash
def test_flash_decode_matches_sdpa_on_ragged_cache():
    generator = torch.Generator().manual_seed(1)
    batch, num_heads, num_kv_heads, capacity, head_dim = 3, 8, 2, 40, 64
    keys = torch.randn(batch, num_kv_heads, capacity, head_dim, generator=generator)
    values = torch.randn(batch, num_kv_heads, capacity, head_dim, generator=generator)
    query = torch.randn(batch, num_heads, 1, head_dim, generator=generator)
    lengths = torch.tensor([40, 7, 23])
    keys, values, query = (t.to("cuda", torch.float16) for t in (keys, values, query))
    output = flash.kvcache_decode(query, keys, values, lengths.cuda(), 0.125)
    expected = decode_attention(query, keys, values, lengths.cuda(), 0.125)
    torch.testing.assert_close(output, expected, rtol=2e-3, atol=2e-3)


@needs_flash
def test_flash_model_matches_sdpa_model():
    from zipvl.testing import build_inputs, build_tiny_model

    model, processor = build_tiny_model("llama", dtype=torch.float16)
    model = model.cuda()
    inputs = build_inputs(processor, "llama", ["a b c " * 60, "d e f " * 45]).to("cuda")
    results = {}
    for backend in ("sdpa", "flash"):
        zipvl.enable(model, zipvl.ZipVLConfig(tau=0.9, prefill="qkv", backend=backend))
        with torch.no_grad():
            results[backend] = (model(**inputs).logits, zipvl.stats(model).kept_tokens)
        zipvl.disable(model)
    valid = inputs["attention_mask"].bool()
    assert (results["sdpa"][1] == results["flash"][1]).all()
    torch.testing.assert_close(results["flash"][0][valid], results["sdpa"][0][valid],
                               rtol=2e-2, atol=2e-2)
