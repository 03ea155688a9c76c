"""Cooperative interruption: SIGINT/SIGTERM set a flag, and no new request starts once it is set.

In-flight requests are left to finish or time out; the apply engine then writes what it has and
exits 128 + signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Interrupted


class StopFlag:
    """Set once by a signal handler; read by every worker before it starts a request."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early if the flag is set. True if it is set."""
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise ``Interrupted`` if the flag is set."""
        if self._event.is_set():
            raise Interrupted(self.signum or signal.SIGINT)


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda s, _frame: flag.set(s))
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
