"""ZipVL's steps run in named ``torch.profiler`` ranges, which the benchmarks time.

The benchmarks read these ranges instead of patching the library, so the names
and counts are part of the interface: one ``zipvl.select`` per sample and layer
at prefill (each with its probes, budget, importance and selection inside; with
``budget_spread: even`` a second one per sample and layer, the ranking at the even
budget once the last layer has scored), one
``zipvl.attention_kernel`` per layer per forward, one ``zipvl.decode`` per layer
per decoding step.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import zipvl
from zipvl.testing import build_inputs, build_tiny_model

STEPS = ("zipvl.probes", "zipvl.probe_attention", "zipvl.budget", "zipvl.importance",
         "zipvl.selection")


@pytest.mark.parametrize("budget_spread", ["per_layer", "even"])
def test_every_step_has_its_range_once_per_sample_and_layer(budget_spread):
    model, processor = build_tiny_model("llama")
    inputs = build_inputs(processor, "llama", ["one two three four five six seven eight nine ten "
                                               "red green blue"] * 2, None)
    num_layers = model.config.num_hidden_layers
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.9, keep_last=2, num_recent_probes=4,
                                          num_random_probes=4, budget_spread=budget_spread))
    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
            output = model(**inputs, **zipvl.cache_kwargs(model), use_cache=True)
            model(input_ids=output.logits[:, -1:].argmax(-1),
                  **{zipvl.cache_keyword(model): zipvl.returned_cache(output)}, use_cache=True)
    finally:
        zipvl.disable(model)
    counts = {event.key: event.count for event in profiler.key_averages()}
    batch = inputs["input_ids"].shape[0]
    for name in STEPS:
        assert counts.get(name) == batch * num_layers, (name, counts.get(name))
    selections = 2 if budget_spread == "even" else 1
    assert counts.get("zipvl.select") == selections * batch * num_layers
    assert counts.get("zipvl.prefill") == num_layers
    assert counts.get("zipvl.decode") == num_layers
    assert counts.get("zipvl.compress") == num_layers
    assert counts.get("zipvl.attention_kernel") == 2 * num_layers
