"""Tests of the offline tiny models (zipvl.testing): every family builds, saves and
reloads like a real checkpoint, generates consistently in batches, and wires its
image tokens correctly."""

from __future__ import annotations

import unicodedata
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

import zipvl.testing.models as models_module
from zipvl.testing import (
    MODEL_CLASSES,
    SUPPORTED_FAMILIES,
    VIDEO_FAMILIES,
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    load_processor,
    make_test_image,
    save_tiny_model,
    tiny_model_path,
)

PROMPTS = ("Describe the image.", "What color is the large square in the top left corner?")
NEW_TOKENS = 6


@cache
def tiny(family: str):
    """One shared build per family (tests only read it)."""
    return build_tiny_model(family)


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


# Per prompt: sizes that give different image token counts in every vision family.
IMAGE_SIZES = ((48, 48), (32, 32))


def images_for(family: str, index: int) -> list:
    """The image of prompt `index` for vision families, none for text families."""
    if family not in VISION_FAMILIES:
        return []
    return [make_test_image(index, size=IMAGE_SIZES[index])]


def image_token_id(model) -> int:
    config = model.config
    return config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index


def text_config(model):
    return model.config.get_text_config()


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_builds_a_small_grouped_query_model_in_eval_mode(family):
    model, processor = tiny(family)
    config = text_config(model)
    assert type(model) is MODEL_CLASSES[family]
    assert not model.training
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    assert config.num_key_value_heads < config.num_attention_heads  # grouped heads
    assert config.max_position_embeddings >= 4096
    assert config.vocab_size >= len(tokenizer_of(processor))
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_dtype_is_applied():
    model, _ = build_tiny_model("llama", dtype=torch.bfloat16)
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_save_and_auto_load_round_trip_gives_identical_logits(family, tmp_path):
    model, processor = tiny(family)
    save_tiny_model(family, tmp_path)
    is_vision = family in VISION_FAMILIES
    model_loader = AutoModelForImageTextToText if is_vision else AutoModelForCausalLM
    loaded_model = model_loader.from_pretrained(tmp_path).eval()
    loaded_processor = load_processor(tmp_path)
    assert type(loaded_model) is type(model)
    assert type(loaded_processor) is type(processor)
    if family not in VIDEO_FAMILIES:  # their stock processor needs torchvision
        processor_loader = AutoProcessor if is_vision else AutoTokenizer
        assert type(processor_loader.from_pretrained(tmp_path)) is type(processor)

    images = images_for(family, 0)
    inputs = build_inputs(processor, family, PROMPTS[0], images)
    loaded_inputs = build_inputs(loaded_processor, family, PROMPTS[0], images)
    assert inputs.keys() == loaded_inputs.keys()
    for key in inputs:
        assert torch.equal(inputs[key], loaded_inputs[key]), key
    with torch.no_grad():
        logits = model(**inputs).logits
        loaded_logits = loaded_model(**loaded_inputs).logits
    assert torch.equal(logits, loaded_logits)
    assert loaded_model.generation_config.eos_token_id == model.generation_config.eos_token_id


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_left_padded_batch_generation_matches_batch_size_one(family):
    model, processor = tiny(family)
    images = [images_for(family, index) for index in range(len(PROMPTS))]
    batch = build_inputs(
        processor, family, list(PROMPTS), images if family in VISION_FAMILIES else None
    )
    # The prompts differ in length, so one row is left-padded.
    assert (batch["attention_mask"] == 0).any()
    assert (batch["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        batch_output = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    batch_new_tokens = batch_output[:, batch["input_ids"].shape[1] :]

    for index, prompt in enumerate(PROMPTS):
        single = build_inputs(processor, family, prompt, images[index])
        assert (single["attention_mask"] == 1).all()
        with torch.no_grad():
            single_output = model.generate(**single, max_new_tokens=NEW_TOKENS, do_sample=False)
        single_new_tokens = single_output[0, single["input_ids"].shape[1] :]
        assert batch_new_tokens[index].tolist() == single_new_tokens.tolist()


NFC_TEXT = st.text(max_size=60).filter(lambda text: unicodedata.normalize("NFC", text) == text)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # the two tokenizer flavours
@settings(max_examples=40, deadline=None)
@given(text=NFC_TEXT)
def test_tokenizer_round_trips_any_text(family, text):
    tokenizer = tokenizer_of(tiny(family)[1])
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tokenizer_round_trips_and_keeps_special_tokens_whole(family):
    tokenizer = tokenizer_of(tiny(family)[1])
    text = "The quick brown fox, 42 times!\n\n  Ünïcödé 日本 🙂 <|im_start|>user<|im_end|><image>"
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(token_ids) == text
    # Trained merges: fewer tokens than bytes on the corpus-like part.
    plain = "The quick brown fox jumps over the lazy dog."
    assert len(tokenizer.encode(plain, add_special_tokens=False)) < len(plain.encode()) / 2
    for special in ("<|im_start|>", "<|im_end|>", "<image>"):
        assert token_ids.count(tokenizer.convert_tokens_to_ids(special)) == 1


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_image_token_count_matches_the_vision_features(family):
    model, processor = tiny(family)
    inputs = build_inputs(processor, family, PROMPTS[0], [make_test_image(1, size=(64, 40))])
    image_tokens = (inputs["input_ids"] == image_token_id(model)).sum().item()
    assert 4 <= image_tokens <= 100  # tens of tokens, not hundreds
    with torch.no_grad():
        model(**inputs)  # would raise on a count mismatch

    # The model does check it: one placeholder short must fail.
    first = (inputs["input_ids"][0] == image_token_id(model)).nonzero()[0].item()
    short = dict(inputs)
    keep = torch.ones_like(inputs["input_ids"][0], dtype=torch.bool)
    keep[first] = False
    short["input_ids"] = inputs["input_ids"][:, keep]
    short["attention_mask"] = inputs["attention_mask"][:, keep]
    if "mm_token_type_ids" in inputs:
        short["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, keep]
    with pytest.raises((ValueError, RuntimeError, IndexError)), torch.no_grad():
        model(**short)


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_two_images_in_one_prompt(family):
    model, processor = tiny(family)
    first, second, other = make_test_image(3), make_test_image(4), make_test_image(5)
    both = build_inputs(processor, family, "Caption these frames.", [first, second])
    token_id = image_token_id(model)

    def count(images):
        inputs = build_inputs(processor, family, "Caption these frames.", images)
        return (inputs["input_ids"] == token_id).sum().item()

    assert (both["input_ids"] == token_id).sum().item() == count([first]) + count([second])
    swapped = build_inputs(processor, family, "Caption these frames.", [first, other])
    with torch.no_grad():
        logits = model(**both).logits[0, -1]
        swapped_logits = model(**swapped).logits[0, -1]
        output = model.generate(**both, max_new_tokens=NEW_TOKENS, do_sample=False)
    # The second image reaches the text model.
    assert not torch.allclose(logits, swapped_logits)
    assert output.shape[1] == both["input_ids"].shape[1] + NEW_TOKENS or (
        output[0, -1].item() in _eos_ids(model)
    )


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return eos if isinstance(eos, list) else [eos]


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_same_seed_same_weights_other_seed_other_weights(family):
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    first = build_tiny_model(family, seed=0)[0].state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    again = build_tiny_model(family, seed=0)[0].state_dict()
    other = build_tiny_model(family, seed=1)[0].state_dict()
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    random_weights = [name for name in first if first[name].std() > 0]
    assert len(random_weights) > len(first) // 3
    assert all(not torch.equal(first[name], other[name]) for name in random_weights)


def test_make_test_image_is_deterministic_and_sized():
    image = make_test_image(7, size=(40, 24))
    assert image.size == (40, 24) and image.mode == "RGB"
    assert image.tobytes() == make_test_image(7, size=(40, 24)).tobytes()
    assert image.tobytes() != make_test_image(8, size=(40, 24)).tobytes()


def test_build_inputs_rejects_images_for_text_families_and_mismatched_batches():
    _, tokenizer = tiny("llama")
    with pytest.raises(ValueError, match="text-only"):
        build_inputs(tokenizer, "llama", "hi", [make_test_image(0)])
    _, processor = tiny("llava")
    with pytest.raises(ValueError, match="image lists"):
        build_inputs(processor, "llava", ["a", "b"], [[make_test_image(0)]])


def test_tiny_model_path_builds_once_and_honours_the_env_override(tmp_path, monkeypatch):
    path = tiny_model_path("qwen2", cache_dir=tmp_path)
    assert path == tmp_path / "qwen2-seed0"
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert tiny_model_path("qwen2", cache_dir=tmp_path) == path
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [entry.name for entry in tmp_path.iterdir()] == ["qwen2-seed0"]  # no staging left

    monkeypatch.setenv("ZIPVL_TINY_CACHE", str(tmp_path / "override"))
    assert tiny_model_path("qwen2") == tmp_path / "override" / "qwen2-seed0"


def test_tiny_model_path_rebuilds_a_stale_cache(tmp_path):
    path = tiny_model_path("mistral", cache_dir=tmp_path)
    stamp = path / models_module.FINGERPRINT_FILE
    stamp.write_text("written by older code")
    (path / "model.safetensors").write_bytes(b"stale")
    assert tiny_model_path("mistral", cache_dir=tmp_path) == path
    assert stamp.read_text().strip() == models_module.tiny_model_fingerprint("mistral")
    assert [entry.name for entry in tmp_path.iterdir()] == ["mistral-seed0"]
    model = AutoModelForCausalLM.from_pretrained(path)
    reference = build_tiny_model("mistral")[0].state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())


def test_tiny_model_path_keeps_the_first_finished_copy_when_builds_race(tmp_path, monkeypatch):
    """Another process finishes its build while ours is still writing: ours is discarded."""
    real_save = models_module.save_tiny_model
    target = tmp_path / "llama-seed0"

    def save_while_another_process_finishes_first(family, path, seed=0):
        # The other process's complete, stamped copy lands at the target.
        real_save(family, target, seed=seed)
        fingerprint = models_module.tiny_model_fingerprint(family, seed)
        (target / models_module.FINGERPRINT_FILE).write_text(fingerprint)
        (target / "marker").write_text("first")
        return real_save(family, path, seed=seed)

    monkeypatch.setattr(models_module, "save_tiny_model", save_while_another_process_finishes_first)
    assert tiny_model_path("llama", cache_dir=tmp_path) == target
    assert (target / "marker").read_text() == "first"  # not replaced by our copy
    assert [entry.name for entry in tmp_path.iterdir()] == ["llama-seed0"]  # our staging removed
    model = AutoModelForCausalLM.from_pretrained(target)
    reference = build_tiny_model("llama")[0].state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())
