"""``zipvl-batch``: the command line (click).

    zipvl-batch run JOB.yaml [--set key.path=value ...] [--verbose]
    zipvl-batch validate JOB.yaml [--set key.path=value ...] [--verbose]
    zipvl-batch status OUTPUT [--json]

Exit codes: 0 the job finished (rows that failed are error rows in the output, not a
failure of the job) or the job file is valid; 1 the job could not run or finish (a
system fault such as a failing ``generate``: the rows it hit are not written, and
rerunning resumes); 2 the job file is invalid (the message on stderr names the field);
3 more than ``output.max_error_fraction`` of the rows are error rows (the rows are
written); 130 interrupted (Ctrl-C, SIGINT) and 143 terminated (SIGTERM: a spot reclaim,
``ray job stop``): the finished rows are flushed into a shard first and rerunning the same
command resumes.

Heavy modules (the spec pulls in the ZipVL config, the runner pulls in Ray and torch)
are imported inside the commands so ``zipvl-batch --help`` answers at once. Nothing
printed here contains credentials: known secret values (job storage options, AWS
environment variables) are scrubbed from every message and log line by a
``pipeline.redaction.Scrubber`` made afresh for each command.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from pipeline.redaction import Scrubber

if TYPE_CHECKING:
    from pipeline.spec import JobSpec

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_JOB = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended

logger = logging.getLogger("pipeline.cli")


def _scrubber() -> Scrubber:
    """This invocation's scrubber (``main`` makes a fresh one per command), or one that
    knows only the environment's credentials outside a command."""
    context = click.get_current_context(silent=True)
    shared = context.obj if context is not None else None  # subcommands share main's obj
    return shared["scrubber"] if isinstance(shared, dict) and "scrubber" in shared else Scrubber()


def _scrub(text: str) -> str:
    return _scrubber()(text)


class _CurrentScrubber(logging.Filter):
    """The log handler is installed once per process; each record is scrubbed with the
    secrets of the command running now."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _scrubber().filter(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (click's test runner swaps it per call)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not any(getattr(handler, "_zipvl_batch", False) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        handler.addFilter(_CurrentScrubber())
        handler._zipvl_batch = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("pipeline", "zipvl"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def _echo_error(message: str) -> None:
    click.echo(_scrub(message), err=True)


def _exit(code: int) -> NoReturn:
    raise SystemExit(code)


def _load_spec(job_file: str, overrides: Iterable[str]) -> JobSpec:
    from pipeline.errors import SpecError
    from pipeline.job_file import load_job

    try:
        spec = load_job(job_file, list(overrides))
    except SpecError as error:
        _echo_error(f"invalid job file {job_file}:")
        for problem in error.problems:
            _echo_error(f"  {problem}")
        _exit(EXIT_BAD_JOB)
    _scrubber().add(spec.secret_values())
    return spec


def _runner_problems(spec: JobSpec, verbose: bool) -> list[str]:
    """``preflight.validate_job``: input schema and model reference, without generating.

    Problems it finds are the job's (exit 2); a crash while checking is ours (exit 1).
    """
    from pipeline.errors import JobError

    try:
        from pipeline.preflight import validate_job

        return list(validate_job(spec))
    except JobError as error:
        return [str(error)]
    except Exception as error:
        _fail_unexpected(f"could not check job {spec.name!r}", error, verbose)


def _checked_spec(context: click.Context, job_file: str, overrides: tuple[str, ...],
                  verbose: bool) -> tuple[Any, bool]:
    """Load and check the job as `validate` and `run` both do; exits on any problem."""
    verbose = verbose or context.obj["verbose"]
    _configure_logging(verbose)
    spec = _load_spec(job_file, overrides)
    problems = _runner_problems(spec, verbose)
    if problems:
        _report_problems(job_file, problems)
    return spec, verbose


def _fail_unexpected(what: str, error: Exception, verbose: bool) -> NoReturn:
    """An error we did not anticipate: one line, or the traceback with --verbose."""
    if verbose:
        _echo_error(traceback.format_exc())
    hint = "" if verbose else " (rerun with --verbose for the traceback)"
    _echo_error(f"{what}: {type(error).__name__}: {error}{hint}")
    _exit(EXIT_FAILED)


def _report_problems(job_file: str, problems: list[str]) -> NoReturn:
    _echo_error(f"job {job_file} cannot run:")
    for problem in problems:
        _echo_error(f"  {problem}")
    _exit(EXIT_BAD_JOB)


def _summary(spec: JobSpec) -> list[str]:
    settings = spec.model_settings()
    columns = spec.input.columns
    mapped = ", ".join(f"{field}={column}" for field, column in
                       (("id", columns.id), ("image", columns.image),
                        ("video", columns.video), ("prompt", columns.prompt))
                       if column is not None)
    config = spec.zipvl_config()
    if config is None:
        method = "dense (no ZipVL)"
    else:
        method = (f"{spec.zipvl if isinstance(spec.zipvl, str) else 'inline'}: tau {config.tau}, "
                  f"prefill {config.prefill}, selection {config.selection}")
    source = f"preset {settings.preset}, " if settings.preset else ""
    resources = spec.resources
    video = spec.video
    sampling = (f"{video.fps} fps, at most {video.max_frames} frames" if video.fps is not None
                else f"{video.sampled_frames} frames")
    video_line = [f"  video:     {video.mode} ({sampling}"
                  + (f", at most {video.max_video_tokens} tokens" if video.max_video_tokens else "")
                  + ")"] if columns.video is not None else []
    return [
        f"  input:     {spec.input.path} ({mapped})"
        + (f", first {spec.input.limit} rows" if spec.input.limit else ""),
        f"  task:      {spec.task.type}: {spec.task.prompt!r}",
        *video_line,
        f"  model:     {settings.label} ({source}family {settings.family}, dtype {settings.dtype})",
        f"  zipvl:     {method}",
        f"  resources: {resources.workers} worker(s), gpus_per_worker {resources.gpus_per_worker}, "
        f"batch_size {resources.batch_size}",
        f"  output:    {spec.output.path}" + (" (resume)" if spec.output.resume else ""),
        f"  ray:       {spec.ray.address or os.environ.get('RAY_ADDRESS') or 'local'}",
    ]


def _verbose_option(function: Any) -> Any:
    return click.option("--verbose", "-v", is_flag=True,
                        help="Debug logging and tracebacks.")(function)


def _overrides_option(function: Any) -> Any:
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
        help="Override a job field, e.g. --set resources.workers=2 --set zipvl.tau=0.96 "
             "--set input.path=s3://bucket/data/ (repeatable; values are YAML scalars).",
    )(function)


_JOB_FILE = click.argument("job_file", type=click.Path(dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_verbose_option
@click.pass_context
def main(context: click.Context, verbose: bool) -> None:
    """Annotate image and video datasets with vision-language models on Ray (ZipVL)."""
    context.obj = {"verbose": verbose, "scrubber": Scrubber()}


@main.command()
@_JOB_FILE
@_overrides_option
@_verbose_option
@click.pass_context
def validate(context: click.Context, job_file: str, overrides: tuple[str, ...],
             verbose: bool) -> None:
    """Check JOB_FILE, the input schema and the model reference without generating."""
    spec, verbose = _checked_spec(context, job_file, overrides, verbose)
    click.echo(_scrub(f"ok: job {spec.name!r} ({job_file})"))
    for line in _summary(spec):
        click.echo(_scrub(line))


@main.command()
@_JOB_FILE
@_overrides_option
@_verbose_option
@click.option("--retry-errors", is_flag=True,
              help="Redo the error rows already in the output (duplicate_id rows excepted): "
                   "they are taken out of their shards first, then done again, each id once.")
@click.pass_context
def run(context: click.Context, job_file: str, overrides: tuple[str, ...], verbose: bool,
        retry_errors: bool) -> None:
    """Run JOB_FILE: validate it, then annotate every input row missing from the output."""
    spec, verbose = _checked_spec(context, job_file, overrides, verbose)
    for line in [f"job {spec.name!r} ({job_file})", *_summary(spec)]:
        click.echo(_scrub(line), err=True)

    from pipeline import runner
    from pipeline.errors import JobError, SpecError, TooManyErrors
    from pipeline.fault_injection import after_shard_from_environment
    from pipeline.stop_signals import Terminated

    try:
        report = runner.run_job(spec, job_file=str(Path(job_file).resolve()),
                                after_shard=after_shard_from_environment(),
                                retry_errors=retry_errors)
    except SpecError as error:
        _echo_error(f"invalid job file {job_file}:\n  {error}")
        _exit(EXIT_BAD_JOB)
    except TooManyErrors as error:
        _echo_error(f"job {spec.name!r} failed: {error}")
        _exit(EXIT_TOO_MANY_ERRORS)
    except JobError as error:
        if verbose:
            _echo_error(traceback.format_exc())
        _echo_error(f"job {spec.name!r} failed: {error}")
        _exit(EXIT_FAILED)
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        _echo_error(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; rerun the same "
                    f"command to resume (finished shards in {spec.output.path} are kept)")
        _exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except Exception as error:
        _fail_unexpected(f"job {spec.name!r} failed", error, verbose)
    for line in _result_lines(spec, report):
        click.echo(_scrub(line))


@main.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_verbose_option
@click.pass_context
def status(context: click.Context, output: str, as_json: bool, verbose: bool) -> None:
    """Show what OUTPUT (a job's output folder, local or s3://) holds, and who writes it.

    Rows done and error rows by kind, rows remaining, the runs so far, and whether a
    run holds the folder now. S3 credentials come from the standard AWS configuration.
    """
    import json

    from pipeline.status import output_status, status_lines

    verbose = verbose or context.obj["verbose"]
    try:
        found = output_status(output)
    except Exception as error:
        _fail_unexpected(f"cannot read the status of {output}", error, verbose)
    if as_json:
        click.echo(_scrub(json.dumps(found, indent=2, default=str)))
        return
    for line in status_lines(found):
        click.echo(_scrub(line))


def _result_lines(spec: JobSpec, report: dict[str, Any]) -> list[str]:
    """Where the output and report are, and the counts, from the runner's report."""
    output_info = report.get("output") if isinstance(report.get("output"), dict) else {}
    output = str(output_info.get("path") or spec.output.path)
    report_name = str(output_info.get("report") or "report.json")
    lines = [f"done: job {spec.name!r}", f"  output: {output}",
             f"  report: {output.rstrip('/')}/{report_name}"]
    counts = report.get("counts")
    if isinstance(counts, dict) and counts:
        lines.append("  rows:   " + ", ".join(f"{name} {value}" for name, value in counts.items()))
    kinds = report.get("errors_by_kind")
    if isinstance(kinds, dict) and kinds:
        lines.append("  errors: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    return lines


if __name__ == "__main__":  # pragma: no cover
    main()
