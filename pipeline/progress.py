"""Live progress of a running job on stderr: rows, rates, errors, mean kept ratio, ETA.

Lines are rate-limited, plus a final one. On a terminal the line is redrawn in
place every second; otherwise (logs, ``ray job submit``) each update is its own
line, every ten seconds, so a long job does not flood its log.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    """Counters of the rows streamed back by the pipeline, and their display."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    interval: float | None = None  # seconds between lines; None: 1 on a terminal, else 10
    rows: int = 0
    errors: int = 0
    output_tokens: int = 0
    kept_ratio_sum: float = 0.0
    kept_ratio_rows: int = 0
    started: float = field(default_factory=time.monotonic)
    _last_shown: float = field(default=float("-inf"), repr=False)

    def update(
        self, rows: int, errors: int, output_tokens: int, kept_ratio_sum: float, kept_ratio_rows: int
    ) -> None:
        self.rows += rows
        self.errors += errors
        self.output_tokens += output_tokens
        self.kept_ratio_sum += kept_ratio_sum
        self.kept_ratio_rows += kept_ratio_rows
        now = time.monotonic()
        if now - self._last_shown >= self._interval():
            self._last_shown = now
            self._show(final=False)

    def _interval(self) -> float:
        if self.interval is not None:
            return self.interval
        return 1.0 if self._interactive() else 10.0

    def _interactive(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def finish(self) -> None:
        self._show(final=True)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def mean_kept_ratio(self) -> float | None:
        return self.kept_ratio_sum / self.kept_ratio_rows if self.kept_ratio_rows else None

    def line(self) -> str:
        """The current status as one line of text."""
        percent = f" ({100.0 * self.rows / self.total:.0f}%)" if self.total else ""
        kept = self.mean_kept_ratio
        kept_text = "dense" if kept is None else f"{kept:.3f}"
        rate = self.rows / self.elapsed
        remaining = max(self.total - self.rows, 0)
        eta = f" | ETA {format_duration(remaining / rate)}" if rate > 0 and remaining else ""
        return (
            f"rows {self.rows}/{self.total}{percent} | {rate:.2f} rows/s | "
            f"{self.output_tokens / self.elapsed:.1f} out tok/s | errors {self.errors} | "
            f"kept ratio {kept_text} | {self.elapsed:.0f}s{eta}"
        )

    def _show(self, final: bool) -> None:
        text = self.line()
        if self._interactive():
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def format_duration(seconds: float) -> str:
    """``42s``, ``7m05s``, ``3h12m``, ``2d04h``: as precise as a glance needs."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
