"""A decoding step never makes the host wait for the device; a prefill reads back only sizes.

No GPU here, so the synchronisations are counted where they enter torch: a
``TorchDispatchMode`` sees every aten op, and a host read of a device value goes
through ``aten._local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``,
``bool(t)``) or an op whose output size the device must report back
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``,
``repeat_interleave`` without ``output_size``). ``Tensor.tolist()`` and
``.numpy()`` dispatch nothing (checked: they read the storage directly), so
they are counted by wrapping the methods. Not observable on CPU: a copy
between devices (``.to(device)``; on CPU it returns the tensor itself), which is
why ZipVL's host-to-device copies all go through ``zipvl.host_transfer``.

The model runs under ``generate`` with every forward call counted separately
(the first is the prefill, the others decoding steps); ``generate``'s own
bookkeeping between calls is transformers', not the model's, and is not counted.
"""

from __future__ import annotations

import collections
import random
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import zipvl
from zipvl.padding import padding_layout
from zipvl.testing import VISION_FAMILIES, build_inputs, build_tiny_model, make_test_image

_TORCH_DIR = str(Path(torch.__file__).parent)
_SYNCING_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique2",
                "unique_dim", "unique_consecutive"}
WORDS = "a bright morning light falls on quiet hills where farmers walk slowly".split()
NEW_TOKENS = 6


def _caller() -> str:
    """``folder/file.py:line`` of the innermost frame outside torch and this counter."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = Path(frame.f_code.co_filename)
    return f"{path.parent.name}/{path.name}:{frame.f_lineno}"


def _reads_device_size(name: str, args: tuple, kwargs: dict) -> bool:
    if name in _SYNCING_OPS:
        return True
    if name == "index":  # boolean-mask indexing runs nonzero inside
        return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool
                   for index in args[1] if index is not None)
    return name == "repeat_interleave" and isinstance(args[0], torch.Tensor) \
        and kwargs.get("output_size") is None


class HostSyncCounter(TorchDispatchMode):
    """Counts host reads of tensor values, by the code location that asked for them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_device_size(func.overloadpacket.__name__, args, kwargs):
            self.sites[f"{func.overloadpacket.__name__} at {_caller()}"] += 1
        return func(*args, **kwargs)

    def count_method(self, name: str) -> None:
        self.sites[f"{name} at {_caller()}"] += 1

    @property
    def total(self) -> int:
        return sum(self.sites.values())


@pytest.fixture
def reads_of_host_methods(monkeypatch):
    """Route ``Tensor.tolist`` / ``Tensor.numpy`` to the active counter (a list of one)."""
    active: list[HostSyncCounter] = []
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            if active:
                active[0].count_method(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return active


def _count_per_forward(model, active: list[HostSyncCounter]) -> tuple[list[HostSyncCounter],
                                                                       list]:
    """Hooks that run each forward call of ``model`` under its own counter."""
    counters: list[HostSyncCounter] = []

    def before(module, args, kwargs):
        counter = HostSyncCounter()
        counter.__enter__()
        counters.append(counter)
        active[:] = [counter]

    def after(module, args, kwargs, output):
        counters[-1].__exit__(None, None, None)
        active.clear()

    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True)]
    return counters, handles


def _ragged_inputs(family: str, processor):
    rng = random.Random(3)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in (170, 120, 150)]
    images = ([[make_test_image(1)], [make_test_image(2), make_test_image(3)], [make_test_image(4)]]
              if family in VISION_FAMILIES else None)
    inputs = build_inputs(processor, family, prompts, images)
    mask = inputs["attention_mask"].bool()
    assert not mask.all() and mask[:, -1].all(), "the batch must be ragged and left-padded"
    return inputs


def _generate_counted(family: str, config: zipvl.ZipVLConfig, active):
    model, processor = build_tiny_model(family)
    inputs = _ragged_inputs(family, processor)
    zipvl.enable(model, config)
    counters, handles = _count_per_forward(model, active)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        stats = zipvl.stats(model)
    finally:
        for handle in handles:
            handle.remove()
        zipvl.disable(model)
    assert len(counters) == NEW_TOKENS, "one prefill and one forward per further token"
    return counters, stats, model.config.get_text_config().num_hidden_layers, len(inputs["input_ids"])


def test_the_counter_sees_every_kind_of_host_read(reads_of_host_methods):
    values = torch.arange(6)
    reads = [lambda: values[0].item(), lambda: int(values.max()), lambda: bool(values.any()),
             lambda: float(values.sum()), lambda: values.tolist(), lambda: values.numpy(),
             lambda: values.nonzero(), lambda: values[values > 2],
             lambda: torch.repeat_interleave(values), lambda: torch.unique(values)]
    for read in reads:
        counter = HostSyncCounter()
        reads_of_host_methods[:] = [counter]
        with counter:
            read()
        reads_of_host_methods.clear()
        assert counter.total >= 1, f"missed a host read: {read}"
    counter = HostSyncCounter()
    with counter:  # device-side work whose sizes the host already knows
        torch.where(values > 2, values, 0).sum()
        values.index_select(0, values[:2])[1:]
    assert counter.total == 0, counter.sites


@pytest.mark.parametrize(("family", "config"), [
    ("llama", zipvl.ZipVLConfig(tau=0.9, prefill="kv_local")),
    ("llama", zipvl.ZipVLConfig(tau=0.9, prefill="qkv", selection="shared")),
    ("llama", zipvl.ZipVLConfig(strategy={"name": "fixed_ratio", "ratio": 0.5}, prefill="dense")),
    ("llava", zipvl.ZipVLConfig(tau=0.9)),
    ("qwen2_vl", zipvl.ZipVLConfig(tau=0.9)),
], ids=["llama-kv_local", "llama-qkv-shared", "llama-fixed_ratio-dense", "llava", "qwen2_vl"])
def test_decoding_steps_never_read_device_values(family, config, reads_of_host_methods):
    counters, stats, num_layers, batch = _generate_counted(family, config, reads_of_host_methods)
    assert (stats.kept_tokens < stats.prompt_tokens[None, :]).any(), "the cache must be compressed"
    for step, counter in enumerate(counters[1:], start=1):
        assert counter.total == 0, f"decoding step {step} read device values: {dict(counter.sites)}"

    # The prefill reads back only sizes, each where the design says (see docs/DESIGN.md).
    prefill = counters[0].sites
    zipvl_sites = {site: count for site, count in prefill.items() if " at zipvl/" in site}
    padding_reads = sum(count for site, count in zipvl_sites.items() if "padding.py" in site)
    budget_reads = sum(count for site, count in zipvl_sites.items() if "budget.py" in site)
    split_kernel_reads = sum(count for site, count in zipvl_sites.items()
                             if "sparse_attention.py" in site)
    assert padding_reads == 1, "the padding layout is read once per prefill, not per layer"
    adaptive = isinstance(config.strategy, zipvl.AdaptiveBudget)
    assert budget_reads == (num_layers * batch if adaptive else 0)
    # The split kv / kv_local kernel is CPU-only: its tolist reads host memory.
    assert split_kernel_reads == (num_layers * batch if config.prefill in ("kv", "kv_local") else 0)
    # The probe positions are drawn on the host (zipvl.probes) and read there as ints for
    # the probe attention's chunk bounds, before their copy to the device: host memory.
    probe_reads = sum(count for site, count in zipvl_sites.items() if "ranking.py" in site)
    assert probe_reads == num_layers * batch
    assert padding_reads + budget_reads + split_kernel_reads + probe_reads \
        == sum(zipvl_sites.values()), zipvl_sites


def test_decoding_steps_between_recompressions_read_nothing(reads_of_host_methods):
    window = 2
    config = zipvl.ZipVLConfig(tau=0.9, recompress_every=window)
    counters, _, num_layers, batch = _generate_counted("llama", config, reads_of_host_methods)
    for step, counter in enumerate(counters[1:], start=1):
        if step % window:
            assert counter.total == 0, f"step {step}: {dict(counter.sites)}"
        else:  # re-compression re-runs selection: its budget decides a size per sample
            # (budget.py); ranking.py reads the host-drawn probe positions (host memory).
            budget_reads = sum(count for site, count in counter.sites.items() if "budget.py" in site)
            probe_reads = sum(count for site, count in counter.sites.items() if "ranking.py" in site)
            assert budget_reads == probe_reads == num_layers * batch, dict(counter.sites)
            assert counter.total == budget_reads + probe_reads, dict(counter.sites)


def test_host_mirrors_follow_the_cache_tensors():
    model, processor = build_tiny_model("llama")
    inputs = _ragged_inputs("llama", processor)
    zipvl.enable(model, zipvl.ZipVLConfig(tau=0.9))
    try:
        cache = zipvl.ZipVLCache()
        with torch.no_grad():
            output = model(**inputs, use_cache=True, **{zipvl.cache_keyword(model): cache})
            mask = inputs["attention_mask"]
            tokens = output.logits[:, -1:].argmax(-1)
            for _ in range(3):
                for layer in cache.layers:
                    assert layer.host_lengths == layer.lengths.tolist()
                    assert layer.host_prompt_tokens == inputs["attention_mask"].sum(1).tolist() \
                        == layer.prompt_tokens.tolist()
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                output = model(input_ids=tokens, attention_mask=mask, use_cache=True,
                               **{zipvl.cache_keyword(model): cache})
                tokens = output.logits[:, -1:].argmax(-1)
        cache.batch_repeat_interleave(2)
        cache.batch_select_indices(torch.tensor([5, 0, 3]))
        for layer in cache.layers:
            assert layer.host_lengths == layer.lengths.tolist()
            assert layer.host_prompt_tokens == layer.prompt_tokens.tolist()
    finally:
        zipvl.disable(model)


@pytest.mark.parametrize("rows", [
    [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],  # left padding, full, empty
    [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0]],  # right padding, inner run, holes
    [[0, 1, 0, 1, 1], [1, 0, 0, 0, 1], [0, 0, 0, 0, 1]],
])
def test_padding_layout_matches_the_mask(rows):
    valid = torch.tensor(rows, dtype=torch.bool)
    layout = padding_layout(valid, *valid.shape)
    batch = torch.randn(valid.shape[0], 2, valid.shape[1], 3)
    output = torch.zeros_like(batch)
    for sample in range(valid.shape[0]):
        reference = valid[sample].nonzero().squeeze(1)
        assert layout.counts[sample] == reference.numel()
        assert torch.equal(layout.take(batch, sample), batch[sample][:, reference])
        kept = torch.arange(0, reference.numel(), 2)[None, :]  # every other real token
        assert torch.equal(layout.in_prompt(sample, kept), reference[kept])
        layout.put(output, sample, layout.take(batch, sample))
    assert torch.equal(output, torch.where(valid[:, None, :, None], batch, 0))
