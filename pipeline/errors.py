"""Errors that stop a job, with messages meant for the user who wrote the job file.

The CLI maps them to exit codes (``SpecError`` -> 2, any other ``JobError`` -> 1),
so anything raised with these types must read well on its own, without a traceback.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


class SystemFault(Exception):
    """Generation failed for a reason that is not the row's: a CUDA or driver error, an
    internal error of the model or of ZipVL, storage that stays unreachable.

    Raised inside a generate actor, it fails the Ray Data pipeline, so the rows of the
    batch are never written: the job stops with exit 1 and a rerun does them. Writing
    them as finished error rows would hide a broken system behind a "successful" job.
    """


class TooManyErrors(JobError):
    """More than ``output.max_error_fraction`` of the job's rows are error rows (exit 3)."""


# What was wrong with a row, in the output's ``error_kind`` column. The row's own
# fault, every one: a broken system is a ``SystemFault``, never an error row.
ERROR_KINDS = {
    "media": "the image or video cell could not be read or decoded",
    "missing_media": "the file or object a media path names does not exist",
    "bad_id": "the id cell is empty",
    "prompt": "the row cannot be made into a prompt (e.g. an empty question)",
    "preprocess": "the model's processor refused the row's media or text",
    "too_long": "the prompt plus max_new_tokens exceeds the model's context",
    "too_large": "the row runs out of accelerator memory even alone in its batch",
    "duplicate_id": "the row's id came earlier in the input; written under a stand-in id",
    "worker_died": "the worker process died (a crash, not an exception) every time it took the row",
}
