"""Cooperative interruption and deadlines: SIGINT/SIGTERM set a flag, no new request starts once it
is set, and no request outlives its deadline by more than ``STOP_GRACE``.

Nothing reaches into sockets. Every request runs inside ``StopFlag.waiting``:

* in the main thread (listings, look-ups), the signal handler raises ``Interrupted`` in the request,
  and an alarm (``signal.setitimer``) raises ``TimeoutError`` in it at its deadline, even inside the
  blocking read of a status line and headers that drip a byte at a time. A blocked read would
  otherwise be resumed after a handler returns (PEP 475); a handler that raises ends it;
* in a worker, the request checks the flag between the pieces of its answer, and the main thread,
  which waits for each worker's future (``settle``), stops waiting ``STOP_GRACE`` after the signal
  or after the request's deadline. That change is of unknown outcome, which the next run resolves.

The run then writes what it has and exits (128 + signal number after a signal: 130 for SIGINT, 143
for SIGTERM): ``exit_process`` does not wait for a worker still blocked on an abandoned request.
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
    """Set once by a signal handler; read by every worker before it starts a request. It also knows
    until when each worker's request in flight may run (its deadline)."""

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
            interrupted = Interrupted(self.signum or signal.SIGINT)
            interrupted.sent = sent
            raise interrupted

    @contextmanager
    def waiting(self, deadline: float | None = None) -> Iterator[None]:
        """Around a wait on the network that must end within ``deadline`` seconds (see the module
        docstring): in the main thread a signal raises ``Interrupted`` in it and the deadline
        ``TimeoutError``; in a worker the main thread stops waiting for it past the deadline."""
        thread = threading.get_ident()
        if thread != threading.main_thread().ident:
            self.check()
            self._ends[thread] = time.monotonic() + (math.inf if deadline is None else deadline)
            try:
                yield
            finally:
                self._ends.pop(thread, None)
            return
        self._main_waiting += 1
        try:
            self.check()
            if deadline is None or not hasattr(signal, "setitimer"):
                yield
            else:
                with _alarm(deadline):
                    yield
        finally:
            self._main_waiting -= 1

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
        """Wait for a submitted future, a short while at a time (the main thread stays free for
        signals). True once it is done; False when the main thread stops waiting for it: the flag was
        set ``STOP_GRACE`` ago, or its worker's request is ``STOP_GRACE`` past its deadline (a server
        that holds it, a byte at a time). Such a worker is lost to the run, its outcome unknown."""
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
def _alarm(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread, wherever it is, ``seconds`` from now, unless the
    block has ended. The SIGALRM handler and any timer set before (a test runner's) are restored."""
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
    """``sys.exit(code)``; but when a worker is still blocked on a request abandoned after a signal
    or its deadline, the interpreter would wait for it at exit: flush the output and end the process
    at once. Only the run's own workers count (a host process, e.g. a test runner, has threads too)."""
    if any(t.is_alive() and t.name.startswith(WORKER_PREFIX) for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
