"""``budget_spread: even``: every layer keeps the mean of the layers' adaptive budgets.

References: the per-layer run of the same config (its budgets are what the mean is
taken over, and its prefill attention is what a sparse prefill must still compute),
a fixed-budget run at the even budget (the same scores, the same ``p``: the same
cache), and each sample run alone (batch size 1).
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

import zipvl
from zipvl.even_spread import ScoredLayer, even_budgets
from zipvl.padding import PaddingLayout
from zipvl.strategies import FixedRatio
from zipvl.testing import VISION_FAMILIES, build_inputs, build_tiny_model, make_test_image

WORDS = ("rivers carry small stones down from the mountains to the sea where waves "
         "break them into sand over many long years").split()
EVEN = zipvl.ZipVLConfig(tau=0.85, prefill="dense", budget_spread="even")
PER_LAYER = dataclasses.replace(EVEN, budget_spread="per_layer")


def _prompts(family, processor, word_counts=(160, 120)):
    rng = random.Random(5)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in word_counts]
    images = None
    if family in VISION_FAMILIES:
        images = [[make_test_image(41 + sample)] for sample in range(len(prompts))]
    return build_inputs(processor, family, prompts, images)


def _prefill(model, config, inputs, **kwargs):
    zipvl.enable(model, config)
    try:
        with torch.no_grad():
            output = model(**inputs, **kwargs)
        return output, zipvl.stats(model)
    finally:
        zipvl.disable(model)


def test_even_budgets_are_the_mean_of_the_scored_layers_rounded_up():
    layout = PaddingLayout.unpadded(2, 10)
    scored = object()  # only "scored or not" matters to the mean

    def entry(budgets, probes):
        return ScoredLayer(layer=None, probes=probes, budgets=budgets, layout=layout,
                           num_kv_heads=1, device=torch.device("cpu"), bytes_per_token=0)

    layers = [entry([4, 10], [scored, None]), entry([5, 10], [scored, None]),
              entry([10, 10], [None, None])]
    # Sample 0: (4 + 5) / 2 rounded up, the unscored layer left out; sample 1: no layer
    # scored, so it keeps its whole prompt.
    assert even_budgets(layers) == [5, 10]


@pytest.mark.parametrize("family", ["llama", "llava"])
def test_every_layer_keeps_the_mean_of_the_per_layer_budgets(family):
    model, processor = build_tiny_model(family)
    inputs = _prompts(family, processor)
    _, per_layer = _prefill(model, PER_LAYER, inputs)
    output, even = _prefill(model, EVEN, inputs)

    assert (per_layer.kept_tokens != per_layer.kept_tokens[:1]).any(), \
        "the reference must have budgets that differ by layer"
    expected = [math.ceil(per_layer.kept_tokens[:, sample].sum() / per_layer.kept_tokens.shape[0])
                for sample in range(per_layer.kept_tokens.shape[1])]
    assert even.kept_tokens.tolist() == [expected] * even.kept_tokens.shape[0]
    cache = zipvl.returned_cache(output)
    assert cache.kept_tokens().tolist() == [expected] * len(cache.layers)
    assert all(layer.lengths.tolist() == expected for layer in cache.layers)
    assert all(not layer.awaiting_compression for layer in cache.layers)


def test_the_even_cache_is_the_fixed_budget_cache_at_the_even_budget():
    model, processor = build_tiny_model("llama")
    inputs = _prompts("llama", processor, word_counts=(150,))
    even_output, even = _prefill(model, EVEN, inputs)
    budget = int(even.kept_tokens[0, 0])
    num_tokens = int(even.prompt_tokens[0])
    assert budget < num_tokens
    fixed = dataclasses.replace(PER_LAYER, strategy=FixedRatio(budget / num_tokens))
    fixed_output, fixed_stats = _prefill(model, fixed, inputs)

    assert fixed_stats.kept_tokens.tolist() == even.kept_tokens.tolist()
    for even_layer, fixed_layer in zip(zipvl.returned_cache(even_output).layers,
                                       zipvl.returned_cache(fixed_output).layers):
        assert torch.equal(even_layer.keys, fixed_layer.keys)
        assert torch.equal(even_layer.values, fixed_layer.values)

    generated = {}
    for name, config in (("even", EVEN), ("fixed", fixed)):
        zipvl.enable(model, config)
        try:
            with torch.no_grad():
                generated[name] = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6,
                                                 do_sample=False)
        finally:
            zipvl.disable(model)
    assert torch.equal(generated["even"], generated["fixed"])


def test_a_padded_batch_keeps_what_each_sample_keeps_alone():
    model, processor = build_tiny_model("llama")
    inputs = _prompts("llama", processor)
    _, batched = _prefill(model, EVEN, inputs)
    for sample in range(2):
        # The batch's own row, unpadded.
        mask = inputs["attention_mask"][sample].bool()
        alone = {"input_ids": inputs["input_ids"][sample][mask][None],
                 "attention_mask": torch.ones(1, int(mask.sum()), dtype=torch.long)}
        _, single = _prefill(model, EVEN, alone)
        assert batched.kept_tokens[:, sample].tolist() == single.kept_tokens[:, 0].tolist()


def test_a_sparse_prefill_still_attends_with_each_layers_own_budget():
    model, processor = build_tiny_model("llama")
    inputs = _prompts("llama", processor)
    sparse_per_layer = dataclasses.replace(PER_LAYER, prefill="kv_local", local_window=16)
    sparse_even = dataclasses.replace(sparse_per_layer, budget_spread="even")
    dense_even, _ = _prefill(model, EVEN, inputs)
    per_layer_output, per_layer = _prefill(model, sparse_per_layer, inputs)
    even_output, even = _prefill(model, sparse_even, inputs)

    assert torch.allclose(even_output.logits, per_layer_output.logits, atol=1e-6, rtol=0)
    assert not torch.allclose(even_output.logits, dense_even.logits, atol=1e-4, rtol=0), \
        "the sparse prefill must differ from the dense one, or the check above proves nothing"
    expected = [math.ceil(per_layer.kept_tokens[:, sample].sum() / per_layer.kept_tokens.shape[0])
                for sample in range(per_layer.kept_tokens.shape[1])]
    assert even.kept_tokens.tolist() == [expected] * even.kept_tokens.shape[0]


def test_dense_layers_keep_everything_and_stay_out_of_the_mean():
    model, processor = build_tiny_model("llama")
    inputs = _prompts("llama", processor)
    _, per_layer = _prefill(model, dataclasses.replace(PER_LAYER, dense_layers=(0,)), inputs)
    _, even = _prefill(model, dataclasses.replace(EVEN, dense_layers=(0,)), inputs)

    assert even.kept_tokens[0].tolist() == even.prompt_tokens.tolist()
    scored = per_layer.kept_tokens[1:]
    expected = [math.ceil(scored[:, sample].sum() / scored.shape[0])
                for sample in range(scored.shape[1])]
    assert even.kept_tokens[1:].tolist() == [expected] * scored.shape[0]


def test_without_a_cache_the_budgets_are_still_reported():
    model, processor = build_tiny_model("llama")
    inputs = _prompts("llama", processor)
    _, with_cache = _prefill(model, EVEN, inputs)
    output, without_cache = _prefill(model, EVEN, inputs, use_cache=False)
    assert zipvl.returned_cache(output) is None
    assert without_cache.kept_tokens.tolist() == with_cache.kept_tokens.tolist()
