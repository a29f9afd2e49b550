"""``output.max_error_fraction``: the arithmetic of when error rows fail a job."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from pipeline.error_budget import MIN_ROWS_FOR_ESTIMATE, ErrorBudget, wilson_lower_bound
from pipeline.errors import TooManyErrors


def score_test_lower_bound(errors: int, rows: int, z: float) -> float:
    """Reference: the smallest share p whose score test (share - p) / sqrt(p(1-p)/n)
    stays at or under z, found by bisection (what the Wilson interval inverts)."""
    share = errors / rows
    low, high = 0.0, share
    for _ in range(200):
        middle = (low + high) / 2
        statistic = (share - middle) / math.sqrt(max(middle * (1 - middle), 1e-300) / rows)
        low, high = (middle, high) if statistic > z else (low, middle)
    return high


@pytest.mark.parametrize(("errors", "rows"), [(0, 10), (3, 40), (15, 100), (100, 100), (7, 1000)])
def test_wilson_lower_bound_inverts_the_score_test(errors, rows):
    assert wilson_lower_bound(errors, rows) == pytest.approx(
        score_test_lower_bound(errors, rows, 3.29), abs=1e-9)


def add_rows(budget: ErrorBudget, ok: int, errors: int, kind: str = "media") -> None:
    budget.add(ok + errors, [kind] * errors, [f"broken {kind}"] * errors)


def test_the_demo_share_passes_and_a_share_over_the_fraction_fails_at_the_end():
    budget = ErrorBudget(0.1, job_rows=40)
    add_rows(budget, ok=0, errors=3)  # the sample's broken images can all come first
    budget.check()
    add_rows(budget, ok=37, errors=0)
    budget.check(final=True)

    over = ErrorBudget(0.1, job_rows=40)
    add_rows(over, ok=35, errors=5)
    with pytest.raises(TooManyErrors, match="5 of the job's 40 rows"):
        over.check(final=True)


def test_it_fails_as_soon_as_no_remaining_row_could_save_the_job():
    budget = ErrorBudget(0.1, job_rows=1000)
    add_rows(budget, ok=800, errors=100)
    assert wilson_lower_bound(100, 900) < 0.1  # not beyond doubt: no early stop
    budget.check()  # 100 of 1000 is still within 10%
    add_rows(budget, ok=0, errors=1, kind="missing_media")
    with pytest.raises(TooManyErrors, match=r"101 of the job's 1000 rows.*Most frequent: media \(100 rows\)"):
        budget.check()


def test_early_stop_needs_enough_rows_and_a_clear_excess():
    budget = ErrorBudget(0.1, job_rows=10**6)
    add_rows(budget, ok=MIN_ROWS_FOR_ESTIMATE - 50, errors=49)
    budget.check()  # 49 of 99: too few rows to judge yet
    add_rows(budget, ok=0, errors=1)
    with pytest.raises(TooManyErrors, match="stopped early: 50 of the first 100 rows"):
        budget.check()

    clear = ErrorBudget(0.1, job_rows=10**6)
    add_rows(clear, ok=850, errors=150)  # 15% of 1000: over 10% beyond doubt
    assert wilson_lower_bound(150, 1000) > 0.1
    with pytest.raises(TooManyErrors, match="stopped early: 150 of the first 1000"):
        clear.check()
    healthy = ErrorBudget(0.1, job_rows=10**6)
    add_rows(healthy, ok=880, errors=120)  # 12%: could still be chance, keep going
    assert wilson_lower_bound(120, 1000) < 0.1
    healthy.check()


def test_earlier_runs_error_rows_count():
    budget = ErrorBudget(0.1, job_rows=40, done_rows=30, errors_by_kind=Counter(media=4))
    add_rows(budget, ok=9, errors=1)
    with pytest.raises(TooManyErrors, match="5 of the job's 40 rows"):
        budget.check(final=True)
