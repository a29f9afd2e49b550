"""SIGTERM and SIGINT during a run: both stop it the way Ctrl-C does, keeping what finished.

A spot reclaim, Kubernetes and ``ray job stop`` send SIGTERM. ``ray.init`` installs
a SIGTERM handler of its own (``sys.exit(15)``), which skips the driver's flush of
its finished rows and its report; inside ``handled_stop_signals`` both signals
raise instead, SIGTERM as ``Terminated`` (a ``KeyboardInterrupt``), so the runner's
one interrupt path flushes the buffered rows into a shard, and the CLI exits with
``EXIT_TERMINATED`` (143, 128 + 15) or ``EXIT_INTERRUPTED`` (130). The previous
handlers come back when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """The run received SIGTERM."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def handled_stop_signals() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Terminated`` and SIGINT ``KeyboardInterrupt``.

    Signal handlers can only be set from the main thread; elsewhere (a driver run
    from a thread) the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
