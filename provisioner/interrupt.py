"""Cooperative interruption and deadlines (docs/reliability.md): SIGINT/SIGTERM set a flag, no request
starts once it is set, none outlives its deadline by more than ``STOP_GRACE``. Inside ``StopFlag.waiting``
the main thread gets ``Interrupted`` at a signal and an alarm's ``TimeoutError`` at the deadline, even in a
blocking read of headers; a worker checks the flag between the pieces of its answer, and the main thread
stops waiting for it ``STOP_GRACE`` later (``settle``), exiting without it if blocked (``exit_process``).
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from .errors import Interrupted

STOP_GRACE = 1.0  # seconds a request in flight gets after SIGINT/SIGTERM, or in a worker after its deadline
T = TypeVar("T")


class StopFlag:
    """Set once by a signal handler, read before every request; knows each worker's request deadline."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.at = math.inf  # when the flag was set (time.monotonic)
        self._main_waiting = 0  # > 0 while the main thread waits on the network
        self._ends: dict[int, float] = {}  # worker thread -> the deadline of its request in flight
        self._workers: dict[futures.Future[Any], list[int]] = {}  # future -> the worker thread running it

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

    def check(self, sent: bool = True) -> None:
        """Raise ``Interrupted`` if the flag is set (``sent``: False when the request never left)."""
        if self._event.is_set():
            raise Interrupted(self.signum or signal.SIGINT, sent)

    @contextmanager
    def waiting(self, deadline: float | None = None) -> Iterator[None]:
        """Around a wait on the network that must end within ``deadline`` seconds (module docstring)."""
        thread, main = threading.get_ident(), threading.current_thread() is threading.main_thread()
        if main:
            self._main_waiting += 1  # before the check: a signal from now on raises in the handler
        else:
            self._ends[thread] = time.monotonic() + (math.inf if deadline is None else deadline)
        try:
            self.check()
            with _alarm(deadline if main else None):
                yield
        finally:
            self._main_waiting -= main
            self._ends.pop(thread, None)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.set(signum)
        if self._main_waiting:
            raise Interrupted(signum)

    # -- the main thread waiting for workers -----------------------------------------------------

    def submit(self, pool: futures.Executor, call: Callable[..., T], *args: Any) -> futures.Future[T]:
        """``pool.submit(call, *args)``, noting the worker thread that runs it (see ``settle``)."""
        worker: list[int] = []
        future = pool.submit(_noted, worker, call, *args)
        self._workers[future] = worker
        return future

    def settle(self, future: futures.Future[Any]) -> bool:
        """Wait for a submitted future, a short while at a time (signals stay handled); False once the flag was
        set, or its worker's request passed its deadline, ``STOP_GRACE`` ago: that worker is lost to the run."""
        worker = self._workers.pop(future, [])
        while not future.done():
            ends = self._ends.get(worker[0], math.inf) if worker else math.inf
            if self.expired() or time.monotonic() > ends + STOP_GRACE:
                return False
            futures.wait([future], timeout=0.2)
        return True


def _noted(worker: list[int], call: Callable[..., T], *args: Any) -> T:
    worker.append(threading.get_ident())
    return call(*args)


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread, wherever it is, ``seconds`` from now, unless the
    block has ended. The SIGALRM handler and any timer set before (a test runner's) are restored."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return
    ringing = True

    def ring(_signum: int, _frame: object) -> None:
        if ringing:
            raise TimeoutError(f"the request deadline of {seconds:g} s has passed")

    previous = signal.signal(signal.SIGALRM, ring)
    began = time.monotonic()
    earlier, interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        try:
            ringing = False  # a signal due now is ignored: the block has ended
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
            if earlier:
                signal.setitimer(signal.ITIMER_REAL, max(earlier - (time.monotonic() - began), 0.001), interval)


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


WORKER_PREFIX = "provisioner-worker"  # the names of engine/apply.py in_workers' threads (apply, check --ping)


def exit_process(code: int) -> NoReturn:
    """``sys.exit(code)``, or, while one of the run's workers (not a host's threads) is blocked on an
    abandoned request the interpreter would wait for at exit, flush the output and end at once."""
    if any(t.is_alive() and t.name.startswith(WORKER_PREFIX) for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
