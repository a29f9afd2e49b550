"""Credentials never leave the process: the one place that knows what a secret is.

- ``redact(value)``: a copy of job options (any nesting) with secrets replaced by
  ``***``: values of keys naming a key, secret, token or password, and user info and
  query strings in URLs (``http://user:pass@host``, a presigned
  ``https://...?X-Amz-Signature=...``). The report, the job as printed and the reprs
  of storage settings all go through it; ``redact_urls_in(text)`` does the same for
  every URL inside free text (error messages, which error rows carry into the output).
- ``secret_values(options)``: the secret strings themselves, so a ``Scrubber`` can
  blank them out of free text (error messages from boto, Ray or pyarrow quote
  whatever they were given).
- ``Scrubber``: replaces known secret values (those of a job, and the AWS credential
  variables of the environment) in text and in log records.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
# Key names whose values are secrets (matched case-insensitively as substrings).
_SECRET_KEY_PARTS = ("key", "secret", "token", "password")
SECRET_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Shorter values would mask ordinary words; credentials are never that short.
_MIN_SECRET_LENGTH = 4


def is_secret_key(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(value: str) -> str:
    """``value`` with a URL's user info and query string replaced by ``***``.

    A query string may be a presigned URL's signature and credential, which grant
    access to the object on their own.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.username is None and parts.password is None and not parts.query:
        return value
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{REDACTED}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "",
                       parts.fragment))


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it passed through ``redact_url``."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def redact(value: Any) -> Any:
    """A copy of `value` (mappings, lists, strings, pydantic models) without secrets."""
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, Mapping):
        return {name: REDACTED if is_secret_key(str(name)) and item is not None
                and not isinstance(item, bool) else redact(item)
                for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    if isinstance(value, str) and "://" in value and ("@" in value or "?" in value):
        return redact_url(value)
    return value


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """The secret strings in one level of options: secret keys' values, URL user info."""
    found = []
    for name, value in options.items():
        if not isinstance(value, str) or not value:
            continue
        if is_secret_key(str(name)):
            found.append(value)
        elif "://" in value and "@" in value:
            parts = urlsplit(value)
            found += [part for part in (parts.username, parts.password) if part]
    return found


class Scrubber(logging.Filter):
    """Replaces known secret values with ``***`` in text (``scrubber(text)``) and log records."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add(os.environ.get(name, "") for name in SECRET_ENVIRONMENT)
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets.update(secret for secret in secrets if len(secret) >= _MIN_SECRET_LENGTH)

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redact_urls_in(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self(record.getMessage())
            record.args = None
        return True
