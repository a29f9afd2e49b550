"""Retrying storage calls through transient failures (an S3 restart, a network blip, throttling).

Exponential backoff with jitter, the AWS recommendation ("Exponential Backoff And
Jitter", AWS Architecture Blog): the delay before attempt ``k + 1`` is drawn
from ``[0, min(cap, base * 2**k)]``, here at least half of it, so ``attempts``
calls span about ``base * 2**(attempts - 1)`` seconds. Only transient errors are
retried; a missing object or a refused credential is an answer, not an outage.
The count is ``storage_options.retries`` of the location (``DEFAULT_ATTEMPTS``).
Ray Data retries its own Parquet reads (``DataContext.retried_io_errors``).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# 8 attempts: 1 + 2 + 4 + 8 + 16 + 30 + 30 = about 90 s of waiting at most, enough for a
# storage server restart or a short network outage; more is a broken system.
DEFAULT_ATTEMPTS = 8
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0

# pyarrow spells AWS errors "AWS Error NETWORK_CONNECTION", botocore "ServiceUnavailable".
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|INTERNAL_FAILURE|SLOW_DOWN|SERVICE_UNAVAILABLE|REQUEST_TIMEOUT"
    r"|Couldn't connect|Could not connect|Connection refused|Connection reset|curlCode"
    r"|timed out|Timeout|EndpointConnectionError|ServiceUnavailable|SlowDown|Throttl"
    r"|InternalError|HTTP status 5\d\d|\b50[0234]\b|Broken pipe",
    re.IGNORECASE,
)
_ANSWER = re.compile(r"NoSuchKey|NoSuchBucket|NOT_FOUND|not found|ACCESS_DENIED|AccessDenied"
                     r"|\b403\b|\b404\b|InvalidAccessKeyId|SignatureDoesNotMatch")


def is_transient(error: BaseException) -> bool:
    """Whether `error` looks like an outage worth waiting out, not an answer from storage."""
    if isinstance(error, FileNotFoundError):
        return False
    text = f"{type(error).__name__}: {error}"
    return bool(_TRANSIENT.search(text)) and not _ANSWER.search(text)


def with_retries(operation: Callable[[], T], attempts: int = DEFAULT_ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``operation()``, called again after transient failures, up to `attempts` calls in all.

    The last failure is raised as it came; `sleep` is a seam for tests.
    """
    for attempt in range(attempts):
        try:
            return operation()
        except Exception as error:
            if attempt == attempts - 1 or not is_transient(error):
                raise
            ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** attempt)
            sleep(random.uniform(ceiling / 2, ceiling))
    raise AssertionError("unreachable")
