"""Errors that stop a job, with messages meant for the user who wrote the job file.

The CLI maps them to exit codes (``SpecError`` -> 2, any other ``JobError`` -> 1),
so anything raised with these types must read well on its own, without a traceback.
"""

from __future__ import annotations


class JobError(Exception):
    """A failure that stops a job (as opposed to a row that fails: that becomes an error row)."""


class SpecError(JobError):
    """The job file (or a ``--set`` override) is invalid.

    The message names the field path, e.g. ``zipvl.tau: must be in (0, 1], got 1.5``;
    ``problems`` holds one such line per problem found.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
