"""Probes, scores, budget and selection against float64 brute force and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zipvl.budget import adaptive_budget, fixed_budget
from zipvl.config import ZipVLConfig
from zipvl.probes import probe_positions
from zipvl.scores import (
    accumulated_scores,
    normalized_scores,
    pool_scores,
    probe_attention,
    probe_attention_sums,
)
from zipvl.select import select_tokens
from zipvl.strategies import AdaptiveBudget

FAST = settings(max_examples=60, deadline=None)


def full_causal_attention_probs(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Naive float64 ``[H, n, n]`` causal softmax, K repeated per query head."""
    num_heads, num_tokens, _ = query.shape
    group = num_heads // key.shape[0]
    key = key.double().repeat_interleave(group, dim=0)
    logits = query.double() @ key.transpose(1, 2) * scale
    future = torch.ones(num_tokens, num_tokens, dtype=torch.bool).triu(1)
    return torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)


def random_qk(num_heads: int, num_kv_heads: int, num_tokens: int, head_dim: int = 8,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_heads, num_tokens, head_dim, generator=generator, dtype=torch.float64)
    key = torch.randn(num_kv_heads, num_tokens, head_dim, generator=generator, dtype=torch.float64)
    return query, key


# --- probes ---------------------------------------------------------------------------------

@FAST
@given(num_tokens=st.integers(0, 300), num_recent=st.integers(0, 80),
       num_random=st.integers(0, 80), seed=st.integers(0, 10_000), layer=st.integers(0, 100))
def test_probe_positions_are_sorted_unique_in_range_and_deterministic(
        num_tokens, num_recent, num_random, seed, layer):
    positions = probe_positions(num_tokens, num_recent, num_random, seed, layer)
    assert positions.dtype == torch.long
    values = positions.tolist()
    assert values == sorted(set(values))
    assert all(0 <= value < num_tokens for value in values)
    recent = min(num_recent, num_tokens)
    assert len(values) == min(num_tokens, recent + num_random)
    # The last R positions are always probes.
    assert set(range(num_tokens - recent, num_tokens)) <= set(values)
    assert torch.equal(positions, probe_positions(num_tokens, num_recent, num_random, seed, layer))
    if num_tokens <= recent + num_random:
        assert values == list(range(num_tokens))


def test_probe_positions_differ_between_layers_and_seeds():
    reference = probe_positions(2000, 16, 64, seed=0, layer_idx=0)
    assert not torch.equal(reference, probe_positions(2000, 16, 64, seed=0, layer_idx=1))
    assert not torch.equal(reference, probe_positions(2000, 16, 64, seed=1, layer_idx=0))


def test_probe_positions_edge_cases():
    assert probe_positions(0, 64, 64, 0, 0).numel() == 0
    assert probe_positions(1, 64, 64, 0, 0).tolist() == [0]
    assert probe_positions(10, 0, 0, 0, 0).numel() == 0
    random_only = probe_positions(50, 0, 7, 3, 2)
    assert random_only.numel() == 7 and random_only.max() < 50


# --- scores ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (4, 4)])
@pytest.mark.parametrize("num_tokens,num_recent,num_random", [(40, 5, 7), (12, 8, 8), (1, 4, 4),
                                                             (30, 0, 6)])
def test_probe_attention_equals_full_softmax_rows(num_heads, num_kv_heads, num_tokens,
                                                  num_recent, num_random):
    query, key = random_qk(num_heads, num_kv_heads, num_tokens)
    positions = probe_positions(num_tokens, num_recent, num_random, seed=1, layer_idx=2)
    scale = 0.3
    probs = probe_attention(query, key, positions, scale)
    assert probs.dtype == torch.float32
    assert probs.shape == (num_heads, positions.numel(), num_tokens)
    reference = full_causal_attention_probs(query, key, scale)[:, positions]
    torch.testing.assert_close(probs.double(), reference, atol=1e-6, rtol=1e-5)


def test_probe_attention_from_low_precision_inputs_is_float32():
    query, key = random_qk(4, 2, 20)
    positions = probe_positions(20, 4, 4, 0, 0)
    probs = probe_attention(query.bfloat16(), key.bfloat16(), positions, 0.35)
    assert probs.dtype == torch.float32
    reference = full_causal_attention_probs(query.bfloat16(), key.bfloat16(), 0.35)[:, positions]
    torch.testing.assert_close(probs.double(), reference, atol=1e-5, rtol=1e-4)


@FAST
@given(heads=st.sampled_from([(6, 2), (4, 4), (9, 3)]), num_tokens=st.integers(1, 120),
       num_recent=st.integers(0, 40), num_random=st.integers(0, 40), chunk=st.integers(1, 20),
       low_precision=st.booleans(), seed=st.integers(0, 1000))
def test_probe_attention_sums_equal_the_summed_full_softmax_rows(heads, num_tokens, num_recent,
                                                                 num_random, chunk,
                                                                 low_precision, seed):
    num_heads, num_kv_heads = heads
    group = num_heads // num_kv_heads
    query, key = random_qk(num_heads, num_kv_heads, num_tokens, seed=seed)
    if low_precision:
        query, key = query.bfloat16(), key.bfloat16()
    positions = probe_positions(num_tokens, num_recent, num_random, seed=seed, layer_idx=3)
    recent_count = min(num_recent, num_tokens)
    recent, earlier = probe_attention_sums(query, key, positions, positions.tolist(),
                                           recent_count, 0.3, chunk=chunk)
    assert recent.dtype == earlier.dtype == torch.float32
    rows = full_causal_attention_probs(query, key, 0.3)[:, positions]
    rows = rows.view(num_kv_heads, group, positions.numel(), num_tokens)
    split = positions.numel() - recent_count
    torch.testing.assert_close(recent.double(), rows[:, :, split:].sum(dim=(1, 2)),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(earlier.double(), rows[:, :, :split].sum(dim=(1, 2)),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ranking", ["recent", "probes"])
@pytest.mark.parametrize("num_tokens", [50, 400])
def test_the_strategy_keeps_what_the_formulas_on_full_probe_attention_keep(ranking, num_tokens):
    """The summed probe attention the strategy uses ranks and budgets like Eqs. 6-7 on ``A``."""
    config = ZipVLConfig(tau=0.9, num_recent_probes=16, num_random_probes=24, keep_last=8,
                         ranking=ranking, score_pooling=3)
    query, key = random_qk(6, 2, num_tokens, head_dim=16, seed=11)
    query, key = query.float(), key.float()
    kept = AdaptiveBudget().kept_positions(query, key, config=config, layer_idx=4, sample=0,
                                           scale=0.25)
    positions = probe_positions(num_tokens, 16, 24, config.seed, 4)
    probs = full_causal_attention_probs(query, key, 0.25)[:, positions].float()
    budget = adaptive_budget(accumulated_scores(probs), 6.0 * positions.numel(), 0.9, 8)
    if ranking == "recent":
        probs, positions = probs[:, -16:], positions[-16:]
    importance = pool_scores(normalized_scores(probs, positions, 2), 3)
    assert budget < num_tokens
    assert torch.equal(kept, select_tokens(importance, budget, 8, "per_head"))


def brute_force_normalized(probs: torch.Tensor, positions: list[int], num_kv_heads: int
                           ) -> torch.Tensor:
    num_heads, _, num_tokens = probs.shape
    group = num_heads // num_kv_heads
    result = torch.zeros(num_kv_heads, num_tokens, dtype=torch.float64)
    for kv_head in range(num_kv_heads):
        for j in range(num_tokens):
            seeing = [row for row, i in enumerate(positions) if i >= j]
            if not seeing:
                continue
            total = sum(float(probs[h, row, j]) for h in range(kv_head * group, (kv_head + 1) * group)
                        for row in seeing)
            result[kv_head, j] = total / (group * len(seeing))
    return result


@pytest.mark.parametrize("num_heads,num_kv_heads", [(6, 2), (3, 3)])
@pytest.mark.parametrize("num_recent,num_random", [(4, 6), (0, 5), (30, 30)])
def test_normalized_and_accumulated_scores_match_the_formulas(num_heads, num_kv_heads,
                                                              num_recent, num_random):
    num_tokens = 25
    query, key = random_qk(num_heads, num_kv_heads, num_tokens, seed=3)
    positions = probe_positions(num_tokens, num_recent, num_random, seed=5, layer_idx=1)
    probs = probe_attention(query, key, positions, 0.4)
    normalized = normalized_scores(probs, positions, num_kv_heads)
    assert normalized.dtype == torch.float32 and normalized.shape == (num_kv_heads, num_tokens)
    torch.testing.assert_close(normalized.double(),
                               brute_force_normalized(probs, positions.tolist(), num_kv_heads),
                               atol=1e-6, rtol=1e-5)
    accumulated = accumulated_scores(probs)
    torch.testing.assert_close(accumulated.double(), probs.double().sum(dim=(0, 1)))
    # Every probe row is a distribution, so the total mass is H * |P|.
    assert math.isclose(float(accumulated.sum()), num_heads * positions.numel(), rel_tol=1e-5)


def test_normalized_denominator_counts_positions_not_nonzero_probabilities():
    # A probe whose attention to key 0 underflows to exactly zero must still count in c_0.
    num_tokens = 3
    query = torch.zeros(1, num_tokens, 1)
    key = torch.tensor([[[-1000.0], [0.0], [0.0]]])
    query[0, 2, 0] = 1.0
    positions = torch.tensor([1, 2])
    probs = probe_attention(query, key, positions, scale=1.0)
    assert probs[0, 1, 0] == 0.0
    normalized = normalized_scores(probs, positions, 1)
    expected_key_0 = float(probs[0, 0, 0] + probs[0, 1, 0]) / 2
    assert math.isclose(float(normalized[0, 0]), expected_key_0, rel_tol=1e-6)


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_pool_scores_is_a_centred_max(kernel):
    scores = torch.rand(3, 17, generator=torch.Generator().manual_seed(kernel))
    pooled = pool_scores(scores, kernel)
    half = kernel // 2
    expected = torch.stack([
        torch.stack([scores[h, max(0, j - half):j + half + 1].max() for j in range(17)])
        for h in range(3)])
    torch.testing.assert_close(pooled, expected)
    with pytest.raises(ValueError):
        pool_scores(scores, 4)


# --- budget ---------------------------------------------------------------------------------

# Multiples of 1/8 add up exactly in float64, so the reference's plain Python sums are exact
# and the boundary k is unambiguous.
mass_lists = st.lists(st.integers(0, 64).map(lambda value: value / 8), min_size=1, max_size=60)


def reaches(values: list[float], count: int, threshold: float) -> bool:
    return sum(sorted(values, reverse=True)[:count]) >= threshold


@FAST
@given(values=mass_lists, tau=st.floats(0.01, 0.999), keep_last=st.integers(0, 70))
def test_adaptive_budget_is_the_smallest_count_reaching_tau(values, tau, keep_last):
    total_mass = sum(values)
    num_tokens = len(values)
    budget = adaptive_budget(torch.tensor(values), total_mass, tau, keep_last)
    assert 1 <= budget <= num_tokens
    assert budget >= min(keep_last, num_tokens)
    threshold = tau * total_mass
    unclamped = next(k for k in range(1, num_tokens + 1) if reaches(values, k, threshold))
    assert budget == max(1, min(max(unclamped, keep_last), num_tokens))
    if budget > max(keep_last, 1):
        assert reaches(values, budget, threshold)
        assert not reaches(values, budget - 1, threshold)


@FAST
@given(values=mass_lists, taus=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5),
       keep_last=st.integers(0, 8))
def test_adaptive_budget_grows_with_tau(values, taus, keep_last):
    accumulated = torch.tensor(values)
    budgets = [adaptive_budget(accumulated, sum(values), tau, keep_last) for tau in sorted(taus)]
    assert budgets == sorted(budgets)


@FAST
@given(num_tokens=st.integers(1, 200), seed=st.integers(0, 1000))
def test_adaptive_budget_tau_one_keeps_every_token(num_tokens, seed):
    # Realistic accumulated scores whose float32 sum may fall short of H * |P|.
    query, key = random_qk(7, 7, num_tokens, seed=seed)
    positions = probe_positions(num_tokens, 3, 3, seed, 0)
    probs = probe_attention(query.float(), key.float(), positions, 1.0)
    total_mass = 7.0 * positions.numel()
    assert adaptive_budget(accumulated_scores(probs), total_mass, 1.0, 0) == num_tokens


def test_adaptive_budget_edge_cases():
    assert adaptive_budget(torch.zeros(0), 0.0, 0.5, 4) == 0
    assert adaptive_budget(torch.tensor([1.0]), 1.0, 0.5, 0) == 1
    # n < keep_last: everything is kept.
    assert adaptive_budget(torch.tensor([5.0, 0.0, 0.0]), 5.0, 0.5, 10) == 3
    # A single dominant token is enough, keep_last raises the floor.
    assert adaptive_budget(torch.tensor([0.0, 9.0, 1.0, 0.0]), 10.0, 0.9, 0) == 1
    assert adaptive_budget(torch.tensor([0.0, 9.0, 1.0, 0.0]), 10.0, 0.9, 2) == 2


@FAST
@given(num_tokens=st.integers(0, 500), ratio=st.floats(0.001, 1.0), keep_last=st.integers(0, 80))
def test_fixed_budget_is_ceil_of_ratio(num_tokens, ratio, keep_last):
    budget = fixed_budget(num_tokens, ratio, keep_last)
    if num_tokens == 0:
        assert budget == 0
        return
    assert 1 <= budget <= num_tokens and budget >= min(keep_last, num_tokens)
    if max(keep_last, 1) < budget:
        assert budget - 1 < ratio * num_tokens + 1e-6 <= budget + 1e-6


def test_fixed_budget_exact_ratios():
    for num_tokens in range(1, 60):
        for count in range(1, num_tokens + 1):
            assert fixed_budget(num_tokens, count / num_tokens, 0) == count


# --- selection ------------------------------------------------------------------------------

@FAST
@given(num_kv_heads=st.integers(1, 4), num_tokens=st.integers(1, 80), budget=st.integers(0, 90),
       keep_last=st.integers(0, 90), selection=st.sampled_from(["per_head", "shared"]),
       seed=st.integers(0, 1000))
def test_select_tokens_properties(num_kv_heads, num_tokens, budget, keep_last, selection, seed):
    scores = torch.rand(num_kv_heads, num_tokens, generator=torch.Generator().manual_seed(seed))
    kept = select_tokens(scores, budget, keep_last, selection)
    num_last = min(keep_last, num_tokens)
    size = min(max(budget, num_last), num_tokens)
    assert kept.dtype == torch.long and kept.shape == (num_kv_heads, size)
    ranking = scores.sum(dim=0, keepdim=True).expand_as(scores) if selection == "shared" else scores
    for kv_head in range(num_kv_heads):
        row = kept[kv_head].tolist()
        assert row == sorted(set(row))
        assert all(0 <= position < num_tokens for position in row)
        assert set(range(num_tokens - num_last, num_tokens)) <= set(row)
        chosen = [j for j in row if j < num_tokens - num_last]
        dropped = [j for j in range(num_tokens - num_last) if j not in set(row)]
        if chosen and dropped:
            assert min(ranking[kv_head, chosen]) >= max(ranking[kv_head, dropped])
    if selection == "shared":
        assert bool((kept == kept[0]).all())


def test_shared_selection_ranks_by_scores_summed_over_heads():
    scores = torch.tensor([[0.9, 0.0, 0.5, 0.1, 0.0],
                           [0.0, 0.8, 0.5, 0.1, 0.0]])
    assert select_tokens(scores, 2, 1, "shared").tolist() == [[2, 4], [2, 4]]
    assert select_tokens(scores, 2, 1, "per_head").tolist() == [[0, 4], [1, 4]]


def test_select_tokens_edge_cases():
    scores = torch.rand(2, 5)
    everything = [list(range(5))] * 2
    assert select_tokens(scores, 5, 0, "per_head").tolist() == everything
    assert select_tokens(scores, 50, 0, "per_head").tolist() == everything
    assert select_tokens(scores, 1, 10, "per_head").tolist() == everything
    assert select_tokens(torch.rand(3, 1), 1, 64, "shared").tolist() == [[0]] * 3
    with pytest.raises(ValueError):
        select_tokens(scores, 2, 1, "sometimes")
