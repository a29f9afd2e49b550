"""When error rows mean the job failed: ``output.max_error_fraction``.

Error rows are data (a broken image is the dataset's fault), but a job where a
large share of rows fail is not a success either: the input is the wrong column,
the media paths point nowhere, the model cannot read these files. The budget
counts every error row of the job, those earlier runs already wrote included, and
fails it (``TooManyErrors``, exit 3):

- as soon as the error rows exceed the fraction of *all* the job's rows (no
  remaining row could bring the share back under it);
- early, once at least ``MIN_ROWS_FOR_ESTIMATE`` rows are done, when the observed
  share is over the fraction beyond doubt: the lower end of its 99.9% Wilson
  interval exceeds it, so a few broken rows that happen to come first do not
  stop a healthy job;
- at the end, when the share over the whole job exceeds it.

Rows that repeat an earlier id (``duplicate_id``) are not counted: the input index
finds them all before the run starts and the run says how many, and they say nothing
about whether the media or the model work.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from pipeline.errors import TooManyErrors

MIN_ROWS_FOR_ESTIMATE = 100
NOT_COUNTED = frozenset({"duplicate_id"})
# Two-sided 99.9% normal quantile: a false early stop needs a 1-in-2000 streak.
_Z = 3.29


def wilson_lower_bound(errors: int, rows: int, z: float = _Z) -> float:
    """Lower end of the Wilson score interval of an error share ``errors / rows``."""
    if rows == 0:
        return 0.0
    share = errors / rows
    centre = share + z * z / (2 * rows)
    margin = z * math.sqrt(share * (1 - share) / rows + z * z / (4 * rows * rows))
    return max(0.0, (centre - margin) / (1 + z * z / rows))


@dataclass
class ErrorBudget:
    """Error rows of a job against ``max_fraction`` of its ``job_rows``."""

    max_fraction: float
    job_rows: int
    done_rows: int = 0
    errors_by_kind: Counter = field(default_factory=Counter)
    example_by_kind: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(count for kind, count in self.errors_by_kind.items() if kind not in NOT_COUNTED)

    def add(self, rows: int, kinds: list[str | None], messages: list[str | None]) -> None:
        """Count `rows` finished rows, of which the error rows have these kinds / messages."""
        self.done_rows += rows
        for kind, message in zip(kinds, messages):
            kind = kind or "unknown"
            self.errors_by_kind[kind] += 1
            if message and kind not in self.example_by_kind:
                self.example_by_kind[kind] = message

    def check(self, final: bool = False) -> None:
        """Raise ``TooManyErrors`` if the job is over its budget (see the module docstring)."""
        allowed = self.max_fraction * self.job_rows
        if self.errors > allowed:
            self._fail(f"{self.errors} of the job's {self.job_rows} rows are error rows")
        if final:
            return
        if (self.done_rows >= MIN_ROWS_FOR_ESTIMATE
                and wilson_lower_bound(self.errors, self.done_rows) > self.max_fraction):
            self._fail(f"stopped early: {self.errors} of the first {self.done_rows} rows are "
                       f"error rows")

    def _fail(self, what: str) -> None:
        kind, count = next((kind, count) for kind, count in self.errors_by_kind.most_common()
                           if kind not in NOT_COUNTED)
        example = self.example_by_kind.get(kind, "")
        raise TooManyErrors(
            f"{what}, over output.max_error_fraction {self.max_fraction:g}. Most frequent: "
            f"{kind} ({count} rows), e.g. {example!r}. The finished rows are written; fix the "
            "cause and run into a new output.path, or raise output.max_error_fraction if "
            "these errors are expected")
