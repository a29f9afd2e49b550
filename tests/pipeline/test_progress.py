"""The progress line: counts, rate and an ETA from the rows left at the rate so far."""

from __future__ import annotations

import io

import pytest

from pipeline.progress import Progress, format_duration


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (425, "7m05s"),
                                               (3 * 3600 + 12 * 60 + 5, "3h12m"),
                                               (2 * 86400 + 4 * 3600 + 59, "2d04h")])
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text


def test_the_eta_is_the_rows_left_at_the_rate_so_far():
    progress = Progress(total=1000, stream=io.StringIO(), interval=1e9)
    progress.started -= 100.0  # 100 s ago
    progress.update(rows=250, errors=3, output_tokens=5000, kept_ratio_sum=125.0,
                    kept_ratio_rows=250)
    line = progress.line()
    # 250 rows in ~100 s: 2.5 rows/s, 750 left -> ~300 s.
    assert line.startswith("rows 250/1000 (25%) | 2.50 rows/s | 50.0 out tok/s | errors 3")
    assert "kept ratio 0.500" in line
    assert line.endswith("| ETA 5m00s")
    progress.update(rows=750, errors=0, output_tokens=0, kept_ratio_sum=0.0, kept_ratio_rows=0)
    assert "ETA" not in progress.line()  # nothing left
