"""What would stop a job, found before it runs: ``validate_job``.

``zipvl-batch validate`` and the first step of ``run``: the input exists and has
the mapped columns, and the model reference resolves to a configuration of a
supported family. Nothing is generated and Ray is not started.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import JobError, first_line
from pipeline.inputs import count_null_ids, input_files, storage_options_for
from pipeline.model_config import read_model_config
from pipeline.output import filesystem_for


def validate_job(spec: Any) -> list[str]:
    """Problems that would stop `spec` from running, one line each (empty: it can run).

    Checks the input exists and its schema has the mapped columns, and that the
    model reference resolves to a ``config.json`` of a supported family (read without
    transformers, ``model_config``: nothing is loaded or generated).
    """
    problems: list[str] = []
    try:
        _, files = input_files(spec)
        problems.extend(_column_problems(spec, files))
    except JobError as error:
        problems.append(str(error))
    problems.extend(_model_problems(spec))
    return problems


def _column_problems(spec: Any, files: list[str]) -> list[str]:
    filesystem, _ = filesystem_for(spec.input.path, storage_options_for(spec.input.storage_options))
    try:
        schema = pq.read_schema(files[0], filesystem=filesystem)
    except Exception as error:
        return [f"input.path: cannot read the Parquet schema of {files[0]}: {error}"]
    mapping = spec.input.columns.model_dump()
    problems = [
        f"input.columns.{field}: column {column!r} is not in the input "
        f"(columns: {', '.join(schema.names)})"
        for field, column in mapping.items()
        if column is not None and column not in schema.names
    ]
    if not problems:
        # A row without an id cannot be written once and found again by a rerun.
        nulls = count_null_ids(filesystem, files, spec.input.columns.id)
        if nulls:
            problems.append(f"input.columns.id: {nulls} row(s) have a null id in column "
                            f"{spec.input.columns.id!r}; give every row an id (or filter those "
                            "rows out): a row without one cannot be resumed or matched")
    return problems


def _model_problems(spec: Any) -> list[str]:
    from pipeline.families import MODEL_TYPES

    settings = spec.model_settings()
    where = "model.preset" if settings.preset else "model.name_or_path"
    if settings.tiny is not None:  # built offline on first use, by the actors
        return []
    try:
        config = read_model_config(str(settings.name_or_path), settings.revision)
    except Exception as error:
        return [f"{where}: cannot load the model configuration of {settings.label}: "
                f"{first_line(error)}"]
    family = config["model_type"] if settings.family == "auto" else settings.family
    if family not in MODEL_TYPES:
        return [f"{where}: model type {config['model_type']!r} is not supported "
                f"(supported: {', '.join(MODEL_TYPES)})"]
    return []
