"""The family registry is the pipeline's one list of families, and each of them works."""

from __future__ import annotations

import typing

import pytest
import torch

import zipvl
from pipeline.families import FAMILIES, MODEL_TYPES, torchvision_imports
from pipeline.image_only_processors import IMAGE_ONLY_PROCESSORS
from pipeline.model_runner import load_processor
from pipeline.presets import Family, FamilyOrAuto
from pipeline.prompts import build_model_inputs, limit_image_tokens
from zipvl.testing import load_processor as reference_processor
from zipvl.testing import make_test_image, tiny_model_path


def test_every_family_is_one_zipvl_patches():
    assert set(MODEL_TYPES) <= set(zipvl.SUPPORTED_MODEL_TYPES)
    assert typing.get_args(Family) == MODEL_TYPES
    assert typing.get_args(FamilyOrAuto) == ("auto", *MODEL_TYPES)


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_the_pipeline_processor_matches_the_reference_one(family):
    path = tiny_model_path(family)
    processor = load_processor(str(path), family, {})
    expected_class = IMAGE_ONLY_PROCESSORS.get(family)
    if expected_class is not None and not torchvision_imports():
        assert type(processor) is expected_class
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        tokenize=False, add_generation_prompt=True)
    reference = reference_processor(path)
    image = make_test_image(3)
    ours = build_model_inputs(processor, ["What?"], [[image]])
    theirs = reference(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_max_image_tokens_caps_exactly_the_families_that_say_so(family):
    path = tiny_model_path(family)
    processor = load_processor(str(path), family, {})
    big = make_test_image(5).resize((256, 256))
    before = build_model_inputs(processor, ["What?"], [[big]])["input_ids"].shape[1]
    limit_image_tokens(processor, family, max_image_tokens=4)
    after = build_model_inputs(processor, ["What?"], [[big]])["input_ids"].shape[1]
    assert (after < before) == FAMILIES[family].caps_image_tokens
