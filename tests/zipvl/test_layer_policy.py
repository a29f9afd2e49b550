"""One layer's selection (ZipVL steps 1-5) against scores computed from the full attention."""

from __future__ import annotations

import math

import pytest
import torch

from zipvl.config import ZipVLConfig
from zipvl.layer_policy import select_for_layer
from zipvl.probes import probe_positions
from zipvl.scores import pool_scores
from zipvl.select import select_tokens
from zipvl.strategies import FixedRatio, SelectionStrategy, SinkAndRecent, strategy_from_value

HEADS = pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (4, 4)])


def random_qk(num_heads: int, num_kv_heads: int, num_tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_heads, num_tokens, 16, generator=generator)
    key = torch.randn(num_kv_heads, num_tokens, 16, generator=generator)
    return query, key


def exact_scores(query, key, scale, num_kv_heads, rows=None):
    """Accumulated ``[n]`` and normalised ``[Hk, n]`` scores from the full float64 attention.

    ``rows`` restricts the probe rows (default: every position is a probe).
    """
    num_heads, num_tokens, _ = query.shape
    group = num_heads // num_kv_heads
    logits = query.double() @ key.double().repeat_interleave(group, 0).transpose(1, 2) * scale
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool).triu(1)
    probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
    rows = torch.arange(num_tokens) if rows is None else rows
    probs = probs[:, rows]
    accumulated = probs.sum(dim=(0, 1))
    seeing = (rows[:, None] >= torch.arange(num_tokens)[None, :]).sum(dim=0).double()
    grouped = probs.reshape(num_kv_heads, group * rows.numel(), num_tokens).sum(dim=1)
    normalized = grouped / (group * seeing)
    return accumulated, normalized, rows.numel()


def smallest_budget(accumulated: torch.Tensor, total_mass: float, tau: float,
                    keep_last: int) -> int:
    ranked = sorted(accumulated.tolist(), reverse=True)
    running, count = 0.0, len(ranked)
    for index, value in enumerate(ranked, start=1):
        running += value
        if running >= tau * total_mass:
            count = index
            break
    return max(1, min(max(count, keep_last), len(ranked)))


@HEADS
@pytest.mark.parametrize("selection", ["per_head", "shared"])
@pytest.mark.parametrize("pooling", [1, 3])
def test_short_sequences_use_exact_scores(num_heads, num_kv_heads, selection, pooling):
    # n <= R + S: every position is a probe, so the scores are those of the full attention.
    num_tokens, scale = 48, 0.25
    query, key = random_qk(num_heads, num_kv_heads, num_tokens, seed=pooling)
    config = ZipVLConfig(tau=0.8, num_recent_probes=32, num_random_probes=32, keep_last=4,
                         selection=selection, score_pooling=pooling, ranking="probes")
    kept, budget = select_for_layer(query, key, config, layer_idx=3, scale=scale)
    accumulated, normalized, num_probes = exact_scores(query, key, scale, num_kv_heads)
    expected_budget = smallest_budget(accumulated, num_heads * num_probes, 0.8, 4)
    assert budget == expected_budget
    assert 4 < budget < num_tokens  # the test exercises a real choice
    expected = select_tokens(pool_scores(normalized, pooling), budget, 4, selection)
    assert torch.equal(kept, expected)


@HEADS
def test_long_sequences_score_with_the_probes_only(num_heads, num_kv_heads):
    num_tokens, scale = 200, 0.25
    query, key = random_qk(num_heads, num_kv_heads, num_tokens, seed=11)
    config = ZipVLConfig(tau=0.9, num_recent_probes=8, num_random_probes=8, keep_last=4,
                         ranking="probes")
    kept, budget = select_for_layer(query, key, config, layer_idx=5, scale=scale)
    rows = probe_positions(num_tokens, 8, 8, config.seed, 5)
    accumulated, normalized, num_probes = exact_scores(query, key, scale, num_kv_heads, rows)
    assert budget == smallest_budget(accumulated, num_heads * num_probes, 0.9, 4)
    assert kept.shape == (num_kv_heads, budget)
    expected = select_tokens(pool_scores(normalized.float(), config.score_pooling), budget, 4,
                             "per_head")
    assert torch.equal(kept, expected)
    again, _ = select_for_layer(query, key, config, layer_idx=5, scale=scale)
    assert torch.equal(kept, again)


@HEADS
def test_tau_one_keeps_every_token(num_heads, num_kv_heads):
    query, key = random_qk(num_heads, num_kv_heads, 70)
    kept, budget = select_for_layer(query, key, ZipVLConfig(tau=1.0), 0, 0.25)
    assert budget == 70
    assert kept.tolist() == [list(range(70))] * num_kv_heads


def test_fixed_ratio_sets_the_budget():
    query, key = random_qk(6, 2, 100)
    config = ZipVLConfig(strategy=FixedRatio(0.37), keep_last=8, num_recent_probes=16,
                         num_random_probes=16)
    kept, budget = select_for_layer(query, key, config, 1, 0.25)
    assert budget == math.ceil(0.37 * 100)
    assert kept.shape == (2, budget)
    assert set(range(92, 100)) <= set(kept[0].tolist())


@pytest.mark.parametrize("num_tokens", [1, 3, 10])
def test_sequences_shorter_than_keep_last_or_probe_window(num_tokens):
    query, key = random_qk(6, 2, num_tokens)
    kept, budget = select_for_layer(query, key, ZipVLConfig(keep_last=64), 0, 0.25)
    assert budget == num_tokens
    assert kept.tolist() == [list(range(num_tokens))] * 2
    kept, budget = select_for_layer(query, key, ZipVLConfig(keep_last=0, tau=0.5), 0, 0.25)
    assert 1 <= budget <= num_tokens and kept.shape == (2, budget)


@HEADS
@pytest.mark.parametrize("num_tokens", [40, 200])
@pytest.mark.parametrize("pooling", [1, 5])
def test_recent_ranking_ranks_by_the_recent_probes_and_budgets_by_all(
        num_heads, num_kv_heads, num_tokens, pooling):
    # 40 tokens: every position is a probe (n <= R + S); 200: recent + random probes.
    scale = 0.25
    query, key = random_qk(num_heads, num_kv_heads, num_tokens, seed=num_tokens + pooling)
    config = ZipVLConfig(tau=0.9, num_recent_probes=12, num_random_probes=30, keep_last=4,
                         ranking="recent", score_pooling=pooling)
    kept, budget = select_for_layer(query, key, config, layer_idx=2, scale=scale)
    rows = probe_positions(num_tokens, 12, 30, config.seed, 2)
    accumulated, _, num_probes = exact_scores(query, key, scale, num_kv_heads, rows)
    assert budget == smallest_budget(accumulated, num_heads * num_probes, 0.9, 4)
    recent_rows = torch.arange(num_tokens - 12, num_tokens)
    _, recent_normalized, _ = exact_scores(query, key, scale, num_kv_heads, recent_rows)
    expected = select_tokens(pool_scores(recent_normalized.float(), pooling), budget, 4,
                             "per_head")
    assert torch.equal(kept, expected)
    # The paper's ranking picks a different set from the same budget.
    paper, paper_budget = select_for_layer(query, key, ZipVLConfig(
        tau=0.9, num_recent_probes=12, num_random_probes=30, keep_last=4,
        score_pooling=pooling, ranking="probes"), layer_idx=2, scale=scale)
    assert paper_budget == budget and not torch.equal(paper, kept)


@pytest.mark.parametrize(("num_tokens", "ratio", "keep_last", "sink"),
                         [(100, 0.3, 8, 4), (100, 0.05, 2, 4), (10, 0.2, 1, 4), (50, 1.0, 0, 4),
                          (40, 0.5, 4, 0)])
def test_sink_and_recent_keeps_the_first_tokens_and_the_latest(num_tokens, ratio, keep_last, sink):
    query, key = random_qk(6, 2, num_tokens)
    config = ZipVLConfig(strategy=SinkAndRecent(ratio, sink_tokens=sink), keep_last=keep_last)
    kept, budget = select_for_layer(query, key, config, 0, 0.25)
    # The reference by position alone: ceil(ratio * n) at least keep_last, sinks first.
    expected_budget = min(num_tokens, max(keep_last, math.ceil(ratio * num_tokens), 1))
    num_sink = min(sink, expected_budget)
    expected = list(range(num_sink)) + list(range(num_tokens - (expected_budget - num_sink),
                                                  num_tokens))
    assert budget == expected_budget
    assert kept.tolist() == [sorted(set(expected))] * 2


def test_a_strategy_round_trips_through_its_config_mapping():
    for strategy in (FixedRatio(0.25), SinkAndRecent(0.5, sink_tokens=2)):
        config = ZipVLConfig(strategy=strategy, keep_last=3)
        assert ZipVLConfig.from_dict(config.to_dict()) == config
    assert ZipVLConfig.from_dict({"strategy": "adaptive"}) == ZipVLConfig()
    assert strategy_from_value({"name": "fixed_ratio", "ratio": 0.5}) == FixedRatio(0.5)
    with pytest.raises(ValueError, match="missing field.*ratio"):
        strategy_from_value("fixed_ratio")
    with pytest.raises(ValueError, match="unknown strategy 'snapkv'"):
        ZipVLConfig(strategy="snapkv")


def test_a_strategy_that_returns_the_wrong_shape_is_refused():
    class OneHeadOnly(SelectionStrategy):
        name = "one-head"

        def kept_positions(self, query, key, *, config, layer_idx, sample, scale):
            return torch.arange(key.shape[1])[None]

    query, key = random_qk(6, 2, 20)
    with pytest.raises(ValueError, match=r"OneHeadOnly must return kept positions \[Hk=2, p\]"):
        select_for_layer(query, key, ZipVLConfig(strategy=OneHeadOnly()), 0, 0.25)
