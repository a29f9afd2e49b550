"""A ragged, left-padded batch gives per sample what batch size 1 gives (ZIPVL.md invariant 3).

Prompts are longer than the 128 probes, so probes are sampled and tau < 1 drops
tokens: the per-sample selection, budget, compressed cache and ragged decoding
all have to ignore the padding for the outputs to match.
"""

from __future__ import annotations

import random

import pytest
import torch

import zipvl
from zipvl.testing import (
    SUPPORTED_FAMILIES,
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    make_test_image,
)

WORDS = ("a bright morning light falls on quiet hills where farmers walk slowly toward "
         "green fields full of wheat and tall old trees").split()
NEW_TOKENS = 5
# The sparse kv_local prefill (the fast preset) exercises the padded kernels; the default
# prefills densely.
CONFIG = zipvl.ZipVLConfig(tau=0.9, prefill="kv_local")


def _samples(family):
    rng = random.Random(7)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in (170, 135)]
    images = ([[make_test_image(21)], [make_test_image(22), make_test_image(23)]]
              if family in VISION_FAMILIES else [[], []])
    return prompts, images


def _generate(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        stats = zipvl.stats(model)
        tokens = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    return logits, stats, tokens[:, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_padded_batch_equals_batch_size_one(family):
    model, processor = build_tiny_model(family)
    prompts, images = _samples(family)
    batch_inputs = build_inputs(processor, family, prompts,
                                images if family in VISION_FAMILIES else None)
    mask = batch_inputs["attention_mask"].bool()
    assert not mask.all(), "the batch must be ragged"
    zipvl.enable(model, CONFIG)
    try:
        batch_logits, batch_stats, batch_tokens = _generate(model, batch_inputs)
        for sample, (prompt, sample_images) in enumerate(zip(prompts, images)):
            single_inputs = build_inputs(processor, family, prompt,
                                         sample_images if family in VISION_FAMILIES else None)
            single_logits, single_stats, single_tokens = _generate(model, single_inputs)

            num_tokens = int(mask[sample].sum())
            assert single_stats.prompt_tokens[0] == num_tokens == batch_stats.prompt_tokens[sample]
            assert num_tokens > 128, "prompts must be longer than the probes"
            assert (single_stats.kept_tokens[:, 0] < num_tokens).any(), "tau < 1 must drop tokens"
            assert (batch_stats.kept_tokens[:, sample] == single_stats.kept_tokens[:, 0]).all()
            torch.testing.assert_close(batch_logits[sample][mask[sample]], single_logits[0],
                                       rtol=1e-4, atol=1e-4)
            assert torch.equal(batch_tokens[sample], single_tokens[0])
    finally:
        zipvl.disable(model)
