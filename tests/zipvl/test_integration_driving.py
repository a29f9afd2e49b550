"""The two ways users drive a patched model, on every supported transformers version.

transformers 5.24 renamed the cache argument ``past_key_values`` to ``cache`` (the
old name stays a deprecated alias until 5.40). ZipVL must not care: ``generate``
with or without an explicit ``ZipVLCache``, and a hand-written loop as lm-eval and
kvpress write it (a ``use_cache=True`` prefill, then one token at a time with the
returned cache and explicit ``position_ids``), passing the cache under either name
and reading it back with ``zipvl.returned_cache``.

References: the unpatched model's greedy tokens (ZipVL at ``tau=1.0`` keeps every
token, so it must reproduce them exactly), and ``generate``'s own tokens for the
compressed model (a manual loop over the same compressed cache must agree).
CI runs this file on the lowest and the newest supported transformers.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

import zipvl
from tests.zipvl.test_integration_cache import batch_of_prompts
from zipvl.testing import build_tiny_model

NEW_TOKENS = 5
COMPRESSING = zipvl.ZipVLConfig(tau=0.85, prefill="kv_local")
EXACT = zipvl.ZipVLConfig(tau=1.0)
# Families whose text positions are plain 1-D ids. Qwen-VL's M-RoPE ids are 4-D and
# model-specific, so its loop passes neither ids nor a mask, one sample (no padding):
# the model derives each step's positions from the cache length and its rope_deltas.
POSITION_ID_FAMILIES = (
    "llama", "mistral", "qwen2", "llava", "llava_next", "llava_next_video", "llava_onevision")
ALL_FAMILIES = (*POSITION_ID_FAMILIES, "qwen2_vl", "qwen2_5_vl")


def _ragged_batch(family, processor, word_counts=(150, 120)):
    return batch_of_prompts(family, processor, word_counts)


@torch.no_grad()
def _generate(model, inputs, explicit_cache: bool) -> torch.Tensor:
    extra = zipvl.cache_kwargs(model) if explicit_cache else {}
    sequences = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               do_sample=False, **extra)
    return sequences[:, inputs["input_ids"].shape[1]:]


@torch.no_grad()
def _manual_loop(model, inputs, cache_name: str, explicit_positions: bool) -> torch.Tensor:
    """Greedy tokens from a prefill then single-token steps, the cache passed as `cache_name`."""
    attention_mask = inputs["attention_mask"]
    prefill_inputs = dict(inputs)
    if explicit_positions:
        # Left padding: positions count a sample's real tokens (padding sits at 0).
        prefill_inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    prefill = model(**prefill_inputs, use_cache=True)
    cache = zipvl.returned_cache(prefill)
    assert isinstance(cache, zipvl.ZipVLCache) == zipvl.patch.is_enabled(model)
    token = prefill.logits[:, -1:].argmax(-1)
    next_position = attention_mask.sum(-1, keepdim=True)
    generated = [token]
    for _ in range(NEW_TOKENS - 1):
        step_inputs = {"input_ids": token, "use_cache": True, cache_name: cache}
        if explicit_positions:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], -1)
            step_inputs.update(attention_mask=attention_mask, position_ids=next_position)
        step = model(**step_inputs)
        cache = zipvl.returned_cache(step)
        token = step.logits[:, -1:].argmax(-1)
        next_position = next_position + 1
        generated.append(token)
    return torch.cat(generated, -1)


def test_cache_keyword_is_the_forward_argument_of_this_transformers():
    model, _ = build_tiny_model("llama")
    renamed = Version(transformers.__version__) >= Version("5.24.0.dev0")
    assert zipvl.cache_keyword(model) == ("cache" if renamed else "past_key_values")
    assert zipvl.cache_kwargs(model) == {}  # unpatched: nothing to hand over
    zipvl.enable(model, EXACT)
    try:
        (name, cache), = zipvl.cache_kwargs(model).items()
        assert name == zipvl.cache_keyword(model) and isinstance(cache, zipvl.ZipVLCache)
    finally:
        zipvl.disable(model)


def test_returned_cache_reads_the_field_this_transformers_declares(monkeypatch):
    model, processor = build_tiny_model("llama")
    inputs = _ragged_batch("llama", processor)
    renamed = Version(transformers.__version__) >= Version("5.24.0.dev0")
    field = "cache" if renamed else "past_key_values"
    if renamed:  # the deprecated alias (a property on every output) must not be read
        from transformers.utils.generic import ModelOutput

        def alias(self):
            raise AssertionError("read the deprecated past_key_values alias")

        monkeypatch.setattr(ModelOutput, "past_key_values", property(alias))
    zipvl.enable(model, COMPRESSING)
    try:
        with torch.no_grad():
            output = model(**inputs, use_cache=True)
            assert field in output.__dataclass_fields__
            cache = zipvl.returned_cache(output)
            assert isinstance(cache, zipvl.ZipVLCache) and cache is getattr(output, field)
            assert cache.get_seq_length() == inputs["input_ids"].shape[1]
            assert zipvl.returned_cache(model(**inputs, use_cache=False)) is None
            generated = model.generate(**inputs, max_new_tokens=2, do_sample=False,
                                       return_dict_in_generate=True)
            assert isinstance(zipvl.returned_cache(generated), zipvl.ZipVLCache)
    finally:
        zipvl.disable(model)
    with pytest.raises(ValueError, match="no cache field"):
        zipvl.returned_cache(object())


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_generate_with_and_without_an_explicit_cache(family):
    model, processor = build_tiny_model(family)
    inputs = _ragged_batch(family, processor)
    dense = _generate(model, inputs, explicit_cache=False)
    zipvl.enable(model, EXACT)
    try:
        exact_hooked = _generate(model, inputs, explicit_cache=False)
        exact_explicit = _generate(model, inputs, explicit_cache=True)
        zipvl.enable(model, COMPRESSING)
        hooked = _generate(model, inputs, explicit_cache=False)
        assert (zipvl.stats(model).kept_tokens < zipvl.stats(model).prompt_tokens).any()
        explicit = _generate(model, inputs, explicit_cache=True)
    finally:
        zipvl.disable(model)
    assert torch.equal(exact_hooked, dense)
    assert torch.equal(exact_explicit, dense)
    assert torch.equal(explicit, hooked)


@pytest.mark.parametrize("cache_name", ["keyword", "past_key_values"])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_manual_loop_matches_generate(family, cache_name):
    model, processor = build_tiny_model(family)
    explicit_positions = family in POSITION_ID_FAMILIES
    inputs = _ragged_batch(family, processor, (150, 120) if explicit_positions else (150,))
    name = zipvl.cache_keyword(model) if cache_name == "keyword" else cache_name
    dense = _generate(model, inputs, explicit_cache=False)
    assert torch.equal(_manual_loop(model, inputs, name, explicit_positions), dense)
    zipvl.enable(model, EXACT)
    try:
        exact = _manual_loop(model, inputs, name, explicit_positions)
        zipvl.enable(model, COMPRESSING)
        compressed_generate = _generate(model, inputs, explicit_cache=True)
        compressed = _manual_loop(model, inputs, name, explicit_positions)
        assert (zipvl.stats(model).kept_tokens < zipvl.stats(model).prompt_tokens).any()
    finally:
        zipvl.disable(model)
    assert torch.equal(exact, dense)
    assert torch.equal(compressed, compressed_generate)
