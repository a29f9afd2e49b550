"""``keep_text_tokens``: every text token kept, the budget spent on image and video tokens.

The selection is checked against float64 formulas on the full probe attention (the
adaptive budget over the media tokens alone, Eq. 7's ranking among them), and on every
vision family against the kept positions the cache receives, per sample of a ragged
batch. A prompt without media tokens must generate what the unpatched model does.
"""

from __future__ import annotations

import random

import pytest
import torch

import zipvl
from tests.zipvl.test_probes_budget_select import full_causal_attention_probs, random_qk
from zipvl.cache import ZipVLLayer
from zipvl.config import ZipVLConfig
from zipvl.probes import probe_positions
from zipvl.scores import normalized_scores, pool_scores
from zipvl.testing import (
    VISION_FAMILIES,
    build_inputs,
    build_tiny_model,
    make_test_image,
)
from zipvl.testing.video_inputs import FRAME_VIDEO_FAMILIES, build_video_inputs, make_test_video
from zipvl.text_tokens import keep_text_and_ranked_media, media_token_ids, sample_media

WORDS = ("rivers carry small stones down from the mountains to the sea where waves "
         "break them into sand over many long years").split()


def reference_kept(query, key, is_media, config, layer_idx, scale):
    """Float64: forced positions, then the fewest media tokens holding tau of their mass."""
    num_heads, num_tokens = query.shape[0], key.shape[1]
    num_kv_heads = key.shape[0]
    positions = probe_positions(num_tokens, config.num_recent_probes, config.num_random_probes,
                                config.seed, layer_idx)
    probs = full_causal_attention_probs(query, key, scale)[:, positions]
    accumulated = probs.sum(dim=(0, 1))
    candidate = is_media.clone()
    candidate[max(num_tokens - config.keep_last, 0):] = False
    candidates = candidate.nonzero().flatten().tolist()
    ordered = sorted(candidates, key=lambda j: -float(accumulated[j]))
    threshold = config.tau * sum(float(accumulated[j]) for j in candidates)
    count, total = 0, 0.0
    while total < threshold and count < len(ordered):
        total += float(accumulated[ordered[count]])
        count += 1
    if config.ranking == "recent":
        probs, positions = probs[:, -config.num_recent_probes:], positions[-config.num_recent_probes:]
    importance = pool_scores(normalized_scores(probs, positions, num_kv_heads), config.score_pooling)
    forced = set(range(num_tokens)) - set(candidates)
    rows = []
    for head in range(num_kv_heads):
        top = sorted(candidates, key=lambda j: -float(importance[head, j]))[:count]
        rows.append(sorted(forced | set(top)))
    assert num_heads % num_kv_heads == 0
    return torch.tensor(rows), importance, candidate


@pytest.mark.parametrize("pooling", [1, 3])
@pytest.mark.parametrize("ranking", ["recent", "probes"])
@pytest.mark.parametrize("tau", [0.6, 0.9])
def test_kept_positions_follow_the_formulas_on_the_media_tokens(ranking, tau, pooling):
    config = ZipVLConfig(tau=tau, num_recent_probes=12, num_random_probes=20, keep_last=6,
                         ranking=ranking, score_pooling=pooling, keep_text_tokens=True)
    num_tokens = 150
    query, key = random_qk(4, 2, num_tokens, head_dim=16, seed=5)
    is_media = torch.zeros(num_tokens, dtype=torch.bool)
    is_media[20:90] = True
    is_media[110:140] = True
    media = sample_media([is_media], config.keep_last)[0]
    assert (media.forced, media.candidates) == (50, 100)
    kept = keep_text_and_ranked_media(query.float(), key.float(), media, config, layer_idx=3,
                                      scale=0.25)
    expected, importance, candidate = reference_kept(query, key, is_media, config, 3, 0.25)
    assert kept.shape == expected.shape
    if pooling == 1:
        assert torch.equal(kept, expected)
    else:  # max pooling makes neighbours tie: the kept scores must be the top ones
        for head in range(kept.shape[0]):
            dropped = set(range(num_tokens)) - set(kept[head].tolist())
            assert all(candidate[j] for j in dropped)
            chosen = [j for j in kept[head].tolist() if candidate[j]]
            reference = [j for j in expected[head].tolist() if candidate[j]]
            assert sorted(importance[head, chosen].tolist()) == sorted(importance[head, reference].tolist())
    assert media.forced < kept.shape[1] < num_tokens  # the budget bites, and only on media


def test_no_media_or_tau_one_keeps_every_token():
    query, key = random_qk(4, 2, 40, seed=1)
    text_only = sample_media([torch.zeros(40, dtype=torch.bool)], keep_last=4)[0]
    media = sample_media([torch.ones(40, dtype=torch.bool)], keep_last=4)[0]
    every = torch.arange(40).expand(2, 40)
    config = ZipVLConfig(tau=0.5, keep_last=4, keep_text_tokens=True)
    assert torch.equal(keep_text_and_ranked_media(query, key, text_only, config, 0, 0.3), every)
    assert torch.equal(keep_text_and_ranked_media(query, key, media, ZipVLConfig(tau=1.0, keep_text_tokens=True),
                                                  0, 0.3), every)


def test_the_config_refuses_what_keep_text_tokens_cannot_do():
    for values, message in [({"strategy": {"name": "fixed_ratio", "ratio": 0.3}}, "adaptive"),
                            ({"budget_spread": "even"}, "per_layer"),
                            ({"recompress_every": 4}, "recompress_every"),
                            ({"keep_text_tokens": 1}, "true or false")]:
        with pytest.raises(ValueError, match=message):
            ZipVLConfig(**{"keep_text_tokens": True, **values})


def _ragged_batch(kind, family, processor):
    rng = random.Random(7)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in (90, 60)]
    if kind == "video":
        return build_video_inputs(processor, family, prompts,
                                  [make_test_video(51 + sample, family, num_frames=4)
                                   for sample in range(len(prompts))])
    images = [[make_test_image(41 + sample)] for sample in range(len(prompts))]
    return build_inputs(processor, family, prompts, images)


def _recorded_compressions(monkeypatch):
    calls = []
    original = ZipVLLayer.compress

    def record(self, kept_per_sample, prompt_tokens=None):
        if prompt_tokens is not None:  # the prefill's, not a re-compression
            calls.append([kept.clone() for kept in kept_per_sample])
        return original(self, kept_per_sample, prompt_tokens)

    monkeypatch.setattr(ZipVLLayer, "compress", record)
    return calls


@pytest.mark.parametrize("kind,family", [("image", family) for family in VISION_FAMILIES]
                         + [("video", family) for family in FRAME_VIDEO_FAMILIES])
def test_every_text_token_reaches_the_cache_and_media_tokens_compete(kind, family, monkeypatch):
    model, processor = build_tiny_model(family)
    inputs = _ragged_batch(kind, family, processor)
    ids = torch.tensor(media_token_ids(model.config))
    is_media = torch.isin(inputs["input_ids"], ids)
    real = inputs["attention_mask"].bool()
    kept_by_option = {}
    for keep_text in (True, False):
        calls = _recorded_compressions(monkeypatch)
        zipvl.enable(model, ZipVLConfig(tau=0.6, keep_last=4, keep_text_tokens=keep_text))
        with torch.no_grad():
            model(**inputs, use_cache=True, **zipvl.cache_kwargs(model))
        zipvl.disable(model)
        monkeypatch.undo()
        assert len(calls) == model.config.get_text_config(decoder=True).num_hidden_layers
        kept_by_option[keep_text] = calls
    text_dropped = 0
    for layer, (with_text, without) in enumerate(zip(kept_by_option[True], kept_by_option[False])):
        for sample in range(real.shape[0]):
            text = (real[sample] & ~is_media[sample]).nonzero().flatten()
            media = (real[sample] & is_media[sample]).nonzero().flatten()
            for head_kept in with_text[sample]:
                assert torch.isin(text, head_kept).all(), (layer, sample)
                assert torch.isin(head_kept, text).sum() == text.numel()
                assert torch.isin(head_kept, media).sum() < media.numel(), (layer, sample)
            text_dropped += int((~torch.isin(text, without[sample][0])).sum())
    assert text_dropped > 0  # without the option the same budget drops text tokens


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_a_prompt_without_media_generates_what_the_unpatched_model_does(family):
    model, processor = build_tiny_model(family)
    inputs = build_inputs(processor, family, ["a short prompt with no image", "rivers " * 30])
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        zipvl.enable(model, ZipVLConfig(tau=0.3, keep_last=2, keep_text_tokens=True))
        got = model.generate(**inputs, max_new_tokens=6, do_sample=False, **zipvl.cache_kwargs(model))
        assert zipvl.stats(model).mean_kept_ratio.min() == pytest.approx(1.0)
    assert torch.equal(got, expected)


def test_the_language_model_alone_cannot_find_the_media_tokens():
    model, processor = build_tiny_model("llava")
    inputs = build_inputs(processor, "llava", "what is this", [make_test_image(2)])
    zipvl.enable(model, ZipVLConfig(tau=0.5, keep_text_tokens=True))
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad(), pytest.raises(RuntimeError, match="input_ids"):
        model.get_decoder()(inputs_embeds=embeddings, attention_mask=inputs["attention_mask"],
                            use_cache=True, **zipvl.cache_kwargs(model))


# ---- zipvl.mark_media: a text model, with the media positions named by the caller ----


def _text_batch(tokenizer):
    rng = random.Random(11)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(count)) for count in (80, 55)]
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


def _marked_span(attention_mask):
    """The middle half of each sample's real tokens, as a text passage standing in for media."""
    is_media = torch.zeros_like(attention_mask, dtype=torch.bool)
    for sample, real in enumerate(attention_mask.bool()):
        positions = real.nonzero().flatten()
        quarter = positions.numel() // 4
        is_media[sample, positions[quarter:-quarter]] = True
    return is_media


def test_marked_positions_compete_and_every_other_position_reaches_the_cache(monkeypatch):
    model, tokenizer = build_tiny_model("llama")
    inputs = _text_batch(tokenizer)
    is_media = _marked_span(inputs["attention_mask"])
    real = inputs["attention_mask"].bool()
    calls = _recorded_compressions(monkeypatch)
    zipvl.enable(model, ZipVLConfig(tau=0.6, keep_last=4, keep_text_tokens=True))
    zipvl.mark_media(model, is_media)
    with torch.no_grad():
        model(**inputs, use_cache=True, **zipvl.cache_kwargs(model))
    assert len(calls) == model.config.num_hidden_layers
    for layer, kept in enumerate(calls):
        for sample in range(real.shape[0]):
            text = (real[sample] & ~is_media[sample]).nonzero().flatten()
            media = (real[sample] & is_media[sample]).nonzero().flatten()
            for head_kept in kept[sample]:
                assert torch.isin(text, head_kept).all(), (layer, sample)
                assert torch.isin(head_kept, media).sum() < media.numel(), (layer, sample)


def test_a_mark_without_media_generates_what_the_unpatched_model_does():
    model, tokenizer = build_tiny_model("llama")
    inputs = _text_batch(tokenizer)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        zipvl.enable(model, ZipVLConfig(tau=0.3, keep_last=2, keep_text_tokens=True))
        zipvl.mark_media(model, torch.zeros_like(inputs["input_ids"], dtype=torch.bool))
        got = model.generate(**inputs, max_new_tokens=6, do_sample=False, **zipvl.cache_kwargs(model))
    assert zipvl.stats(model).mean_kept_ratio.min() == pytest.approx(1.0)
    assert torch.equal(got, expected)


def test_a_mark_serves_one_prefill_and_a_text_model_without_one_is_refused():
    model, tokenizer = build_tiny_model("llama")
    inputs = _text_batch(tokenizer)
    zipvl.enable(model, ZipVLConfig(tau=0.6, keep_text_tokens=True))
    zipvl.mark_media(model, _marked_span(inputs["attention_mask"]))
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False, **zipvl.cache_kwargs(model))
        with pytest.raises(RuntimeError, match="mark_media"):
            model.generate(**inputs, max_new_tokens=3, do_sample=False, **zipvl.cache_kwargs(model))
        zipvl.mark_media(model, _marked_span(inputs["attention_mask"])[:, 1:])
        with pytest.raises(RuntimeError, match="media mask is"):
            model(**inputs, use_cache=True, **zipvl.cache_kwargs(model))


def test_mark_media_refuses_what_it_cannot_serve():
    text_model, tokenizer = build_tiny_model("llama")
    mask = torch.ones(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="not patched"):
        zipvl.mark_media(text_model, mask)
    zipvl.enable(text_model, ZipVLConfig(tau=0.6))
    with pytest.raises(ValueError, match="keep_text_tokens=True"):
        zipvl.mark_media(text_model, mask)
    zipvl.enable(text_model, ZipVLConfig(tau=0.6, keep_text_tokens=True))
    with pytest.raises(ValueError, match="bool"):
        zipvl.mark_media(text_model, mask.long())
    lvlm, _ = build_tiny_model("llava")
    zipvl.enable(lvlm, ZipVLConfig(tau=0.6, keep_text_tokens=True))
    with pytest.raises(ValueError, match="input_ids"):
        zipvl.mark_media(lvlm, mask)
