"""``generate_rows`` on a real tiny model: which failures are the row's and which the system's.

No Ray here: the model is loaded in-process exactly as a generate actor loads it.
The reference for every answered row is the same model at batch size 1.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import zipvl
from pipeline.errors import SystemFault
from pipeline.job_file import load_job
from pipeline.model_runner import GenerationSettings, context_length, generate_rows, load_model
from tests.conftest import CAPTIONS_JOB
from zipvl.patch import runtime_state
from zipvl.testing import make_test_image

GENERATION = GenerationSettings(max_new_tokens=6)
PROMPT = "Describe this image in one sentence."


@pytest.fixture(scope="module")
def loaded():
    spec = load_job(CAPTIONS_JOB, ["output.path=/tmp/unused"])
    return load_model(spec.model_settings(), spec.zipvl_config(), "cpu")


def one_by_one(loaded, texts, images):
    return [generate_rows(loaded, [text], [row], GENERATION)[0] for text, row in zip(texts, images)]


def test_a_prompt_too_long_for_the_context_is_an_error_row_and_the_rest_are_answered(loaded):
    context = context_length(loaded.model)
    assert context is not None
    words = " ".join(["stone"] * (context + 10))
    texts = [PROMPT, words, PROMPT + " Be brief."]
    images = [[make_test_image(index)] for index in range(3)]
    results = generate_rows(loaded, texts, images, GENERATION)
    assert results[1].error_kind == "too_long" and results[1].output is None
    assert f"context of {context}" in results[1].error
    assert results[1].prompt_tokens > context - GENERATION.max_new_tokens
    reference = one_by_one(loaded, [texts[0], texts[2]], [images[0], images[2]])
    assert [results[0].output, results[2].output] == [row.output for row in reference]
    assert all(row.error is None for row in (results[0], results[2]))


def test_a_row_the_processor_refuses_is_a_preprocess_error_row(loaded, monkeypatch):
    processor = loaded.processor
    original = type(processor).__call__

    def refuse_red_images(self, *args, images=None, **kwargs):
        for image in images or []:
            if image.getpixel((0, 0)) == (255, 0, 0):
                raise ValueError("cannot handle this picture")
        return original(self, *args, images=images, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", refuse_red_images)
    images = [[make_test_image(1)], [Image.new("RGB", (32, 32), (255, 0, 0))], [make_test_image(2)]]
    results = generate_rows(loaded, [PROMPT] * 3, images, GENERATION)
    assert results[1].error_kind == "preprocess" and "cannot handle this picture" in results[1].error
    reference = one_by_one(loaded, [PROMPT] * 2, [images[0], images[2]])
    assert [results[0].output, results[2].output] == [row.output for row in reference]


def test_a_failing_generate_is_a_system_fault_not_an_error_row(loaded, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(loaded.model, "generate", broken)
    with pytest.raises(SystemFault, match="device-side assert"):
        generate_rows(loaded, [PROMPT] * 2, [[make_test_image(0)], [make_test_image(1)]], GENERATION)


def test_out_of_memory_halves_the_batch_and_a_row_too_large_alone_is_an_error_row(loaded,
                                                                                 monkeypatch):
    real_generate = loaded.model.generate
    calls = []

    def out_of_memory_over(limit):
        def generate(**kwargs):
            calls.append(int(kwargs["input_ids"].shape[0]))
            if calls[-1] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return real_generate(**kwargs)
        return generate

    images = [[make_test_image(index)] for index in range(5)]
    reference = one_by_one(loaded, [PROMPT] * 5, images)
    monkeypatch.setattr(loaded.model, "generate", out_of_memory_over(2))
    results = generate_rows(loaded, [PROMPT] * 5, images, GENERATION)
    assert calls == [5, 2, 3, 1, 2]  # halves: 2 + 3, and the 3 again as 1 + 2
    assert [row.output for row in results] == [row.output for row in reference]
    assert all(row.error is None for row in results)

    calls.clear()
    monkeypatch.setattr(loaded.model, "generate", out_of_memory_over(0))
    results = generate_rows(loaded, [PROMPT] * 2, images[:2], GENERATION)
    assert calls == [2, 1, 1]
    assert [row.error_kind for row in results] == ["too_large", "too_large"]
    assert all("too large for this model on this device" in row.error for row in results)


def test_a_sampled_row_does_not_depend_on_its_batch(loaded):
    sampling = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.3, top_p=0.9,
                                  seed=11)
    ids = ["row-a", "row-b", "row-c"]
    images = [[make_test_image(index)] for index in range(3)]
    texts = [PROMPT, PROMPT + " Briefly.", PROMPT]
    together = generate_rows(loaded, texts, images, sampling, row_ids=ids)
    reordered = generate_rows(loaded, texts[::-1], images[::-1], sampling, row_ids=ids[::-1])
    alone = [generate_rows(loaded, [text], [row], sampling, row_ids=[row_id])[0]
             for text, row, row_id in zip(texts, images, ids)]
    assert [row.output for row in together] == [row.output for row in alone]
    assert [row.output for row in reordered][::-1] == [row.output for row in alone]
    # It does sample: rows 0 and 2 share prompt and model but not their stream, and the
    # draws are not the greedy tokens.
    greedy = generate_rows(loaded, texts, images, GenerationSettings(max_new_tokens=8))
    assert [row.output for row in together] != [row.output for row in greedy]
    other_seed = generate_rows(loaded, texts, images, GenerationSettings(
        max_new_tokens=8, do_sample=True, temperature=1.3, top_p=0.9, seed=12), row_ids=ids)
    assert [row.output for row in other_seed] != [row.output for row in together]


def test_sampling_without_row_ids_is_refused(loaded):
    with pytest.raises(ValueError, match="row ids"):
        generate_rows(loaded, [PROMPT], [[make_test_image(0)]],
                      GenerationSettings(do_sample=True))


def test_row_sampler_draws_from_the_warped_distribution():
    """Reference: transformers' own warpers then softmax, estimated over many draws."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from pipeline.row_sampling import PerRowSampler

    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    expected = torch.softmax(TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, scores)), -1)
    sampler = PerRowSampler(["x"], seed=3, temperature=0.7, top_p=0.8, device=torch.device("cpu"))
    counts = torch.zeros(5)
    for _ in range(4000):
        kept = sampler(None, scores.clone())
        assert torch.isfinite(kept).sum() == 1
        counts[kept.argmax()] += 1
    torch.testing.assert_close(counts / counts.sum(), expected[0], atol=0.03, rtol=0)


def test_keep_text_tokens_from_the_job_file_keeps_the_text_and_is_batch_invariant():
    spec = load_job(CAPTIONS_JOB, ["output.path=/tmp/unused", "zipvl.keep_text_tokens=true",
                                   "zipvl.tau=0.6", "zipvl.keep_last=2"])
    assert spec.zipvl_config().keep_text_tokens
    loaded = load_model(spec.model_settings(), spec.zipvl_config(), "cpu")
    texts = [PROMPT, PROMPT + " Say what is in it, and where, and what colour it is."]
    images = [[make_test_image(index)] for index in range(2)]
    together = generate_rows(loaded, texts, images, GENERATION)
    assert [row.output for row in together] == [row.output for row in one_by_one(loaded, texts, images)]
    # The last prefill (the second row alone) kept every text token, and not every token.
    is_media = runtime_state(loaded.model).media[0]
    record = zipvl.stats(loaded.model)
    assert int(record.prompt_tokens[0]) == is_media.numel() and is_media.any()
    kept = record.kept_tokens[:, 0]
    assert (kept >= int((~is_media).sum())).all() and (kept < is_media.numel()).any()
