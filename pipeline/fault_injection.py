"""Stop a real run at a known point, for the tests that kill or interrupt the driver.

The runner takes an ``after_shard(shards_written)`` callback; it knows nothing of
tests. The command line builds that callback here, once, from two environment
variables a test sets on the ``zipvl-batch`` process it starts (a subprocess can
be handed nothing else):

- ``ZIPVL_BATCH_TEST_CRASH_AFTER_SHARDS=N``: after N shards, SIGKILL (a hard crash);
- ``ZIPVL_BATCH_TEST_INTERRUPT_AFTER_SHARDS=N``: after N shards, a Ctrl-C;
- ``ZIPVL_BATCH_TEST_PAUSE_AFTER_SHARDS=N``: after N shards, wait (for a signal from
  outside, such as ``ray job stop``'s SIGTERM, to land mid-job).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping

CRASH_AFTER_SHARDS_ENV = "ZIPVL_BATCH_TEST_CRASH_AFTER_SHARDS"
INTERRUPT_AFTER_SHARDS_ENV = "ZIPVL_BATCH_TEST_INTERRUPT_AFTER_SHARDS"
PAUSE_AFTER_SHARDS_ENV = "ZIPVL_BATCH_TEST_PAUSE_AFTER_SHARDS"

AfterShard = Callable[[int], None]


def after_shard_from_environment(environment: Mapping[str, str] = os.environ) -> AfterShard | None:
    """The stop hook the environment asks for, or None (every normal run)."""
    crash_after = environment.get(CRASH_AFTER_SHARDS_ENV)
    interrupt_after = environment.get(INTERRUPT_AFTER_SHARDS_ENV)
    pause_after = environment.get(PAUSE_AFTER_SHARDS_ENV)
    if not crash_after and not interrupt_after and not pause_after:
        return None

    def after_shard(shards_written: int) -> None:
        if interrupt_after and shards_written >= int(interrupt_after):
            # What Python's SIGINT handler does, called directly: a SIGINT sent to the
            # driver was once seen not to stop the run in CI (Ray can hold SIGINT back
            # while it deserialises), and the test needs the interruption at this point.
            signal.default_int_handler(signal.SIGINT, None)
        if crash_after and shards_written >= int(crash_after):
            os.kill(os.getpid(), signal.SIGKILL)
        while pause_after and shards_written >= int(pause_after):
            time.sleep(1)

    return after_shard
