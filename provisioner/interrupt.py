"""Cooperative interruption: SIGINT/SIGTERM set a flag, and no new request starts once it is set.

Nothing reaches into sockets. A worker checks the flag before each request and between the chunks of
an answer; the apply stage stops waiting for requests still in flight a second after the signal and
records them as of unknown outcome, which the next run resolves. A request the main thread is
blocked on is ended by the signal handler itself, which raises ``Interrupted`` there (a blocked read
would otherwise be retried after the handler returns, PEP 475). The run then writes what it has and
exits 128 + signal number (130 for SIGINT, 143 for SIGTERM): ``exit_process`` does not wait for a
worker still blocked on an abandoned request.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from .errors import Interrupted

STOP_GRACE = 1.0  # seconds requests in flight get to finish after SIGINT/SIGTERM


class StopFlag:
    """Set once by a signal handler; read by every worker before it starts a request."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.at = float("inf")  # when the flag was set (time.monotonic)
        self._main_waiting = 0  # > 0 while the main thread waits on the network

    def set(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early if the flag is set. True if it is set."""
        return self._event.wait(timeout)

    def expired(self) -> bool:
        """Set ``STOP_GRACE`` ago or more: requests still in flight are abandoned."""
        return time.monotonic() >= self.at + STOP_GRACE

    def check(self) -> None:
        """Raise ``Interrupted`` if the flag is set."""
        if self._event.is_set():
            raise Interrupted(self.signum or signal.SIGINT)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a request: in the main thread, a signal raises ``Interrupted`` in the request."""
        main = threading.current_thread() is threading.main_thread()
        self._main_waiting += main
        try:
            self.check()
            yield
        finally:
            self._main_waiting -= main

    def on_signal(self, signum: int, _frame: object) -> None:
        self.set(signum)
        if self._main_waiting:
            raise Interrupted(signum)


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {signum: signal.signal(signum, flag.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


WORKER_PREFIX = "provisioner-worker"  # the name of the worker threads (engine/apply.py's in_workers)


def exit_process(code: int) -> NoReturn:
    """``sys.exit(code)``; but when a worker (of apply, or check --ping) is still blocked on a request
    abandoned after a signal, the interpreter would wait for it at exit: flush the output and end the
    process at once. Only our own workers count (a host process, e.g. a test runner, has threads too)."""
    if any(t.is_alive() and t.name.startswith(WORKER_PREFIX) for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
