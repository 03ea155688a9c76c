"""A request-rate budget shared by every worker thread of one run.

Cloud Elements does not document a rate limit, but an API may still answer 429. When one worker is
throttled, every worker must slow down, otherwise the others keep hammering the API and each of
them gets its own 429. ``RateBudget`` is that shared brake, using AIMD (additive increase,
multiplicative decrease):

* ``acquire()`` blocks until a request may start: never during a pause, and never closer than
  ``1 / limit`` seconds after the previous start while a limit is in force.
* ``on_throttle(retry_after)`` pauses everyone until ``now + (retry_after or 1 s)`` and halves the
  allowed rate (half of the rate observed over the last few seconds, or of the current limit,
  whichever is lower; floor 2 requests/s). Throttles that arrive while a pause is running, or
  within ``CUT_INTERVAL`` of the last cut, come from requests sent before the brake took effect:
  they extend the pause but do not cut again.
* ``on_success()`` raises the limit by ``increase`` requests/s (default: a tenth of the rate to
  recover to) per second since the pause ended;
  once it passes ``max_rate`` (or, without one, twice the rate at which throttling began) the
  budget is back to its unthrottled state.

The logic is pure: the clock and the sleep function are injectable, so tests drive it with a fake
clock and no real waiting.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

# How far back the observed request rate looks, in seconds.
OBSERVATION_WINDOW = 5.0
# Shortest span the observed rate is computed over: 3 requests in 10 ms is not 300 requests/s.
MIN_OBSERVED_SPAN = 1.0
# Pause used when a 429 carries no Retry-After.
DEFAULT_PAUSE = 1.0
# The rate is never cut below this (requests/second), unless max_rate itself is lower.
MIN_RATE = 2.0
# A burst of 429s cuts the rate once: another cut needs throttling to persist this long after it.
CUT_INTERVAL = 5.0
# Recovery per second, as a fraction of the rate to recover to (about ten seconds to full speed).
RECOVERY_FRACTION = 0.1


class RateBudget:
    """Shared, thread-safe start-time budget for HTTP requests (see the module docstring)."""

    def __init__(self, max_rate: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep, *, increase: float | None = None):
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be a positive number of requests per second, or None")
        if increase is not None and not increase > 0:
            raise ValueError("increase must be positive")
        self._clock = clock
        self._sleep = sleep
        self._increase = increase
        self._max_rate = max_rate
        self._lock = threading.Lock()
        self._limit: float | None = max_rate      # None: no ceiling at all
        self._throttled = False                    # in AIMD recovery
        self._recover_to: float | None = None      # leave recovery once the limit passes this
        self._paused_until = -math.inf
        self._next_slot = -math.inf
        self._last_increase = -math.inf
        self._epoch = 0                            # bumped by each throttle: reservations before it are void
        self._last_cut = -math.inf
        self._starts: deque[float] = deque()
        self._throttle_count = 0

    # -- what the client calls -------------------------------------------------------------

    def acquire(self, wait: Callable[[float], object] | None = None, deadline: float | None = None) -> bool:
        """Block until a request may start, and count it as started.

        ``wait(seconds)`` replaces the budget's sleep for this call (the client passes
        ``StopFlag.wait``); if it returns a true value the wait was cut short and ``acquire``
        returns False without starting anything. If the request could start only after
        ``deadline`` (clock time; a long Retry-After), it returns False at once, without waiting.
        Otherwise it returns True.
        """
        wait = wait or self._sleep
        while True:
            with self._lock:
                now = self._clock()
                if deadline is not None and self._paused_until > deadline:
                    return False
                start = self._reserve(now)
                epoch = self._epoch
                if start <= now:
                    self._record_start(now)
                    return True
            if wait(start - now):
                return False
            with self._lock:
                if self._epoch == epoch:  # no throttle arrived while we waited: the slot still holds
                    self._record_start(self._clock())
                    return True

    def on_throttle(self, retry_after: float | None = None) -> None:
        """The API answered 429: pause everyone and cut the rate (once per pause)."""
        with self._lock:
            now = self._clock()
            pause = retry_after if retry_after is not None and retry_after > 0 else DEFAULT_PAUSE
            already_paused = now < self._paused_until
            self._paused_until = max(self._paused_until, now + pause)
            self._next_slot = self._paused_until
            self._last_increase = self._paused_until
            self._epoch += 1
            self._throttle_count += 1
            if not already_paused and now - self._last_cut >= CUT_INTERVAL:
                self._cut_rate(now)
                self._last_cut = now

    def on_success(self) -> None:
        """A request succeeded: grow the limit additively, and lift it once it has recovered."""
        with self._lock:
            if not self._throttled:
                return
            now = self._clock()
            if now <= self._last_increase:
                return
            step = self._increase if self._increase is not None else max(
                1.0, RECOVERY_FRACTION * (self._recover_to or MIN_RATE))
            self._limit += step * (now - self._last_increase)
            self._last_increase = now
            if self._limit > self._recover_to:
                self._throttled = False
                self._limit = self._max_rate
                self._recover_to = None

    # -- state, for tests and the run summary ----------------------------------------------

    @property
    def limit(self) -> float | None:
        """Requests/second currently allowed; None when there is no ceiling."""
        with self._lock:
            return self._limit

    @property
    def throttled(self) -> bool:
        """True while the API's throttling is being recovered from."""
        with self._lock:
            return self._throttled

    @property
    def paused_until(self) -> float:
        """Clock time before which no request starts (``-inf`` if never paused)."""
        with self._lock:
            return self._paused_until

    @property
    def throttle_count(self) -> int:
        """How many 429 answers were reported."""
        with self._lock:
            return self._throttle_count

    # -- internals (called with the lock held) ----------------------------------------------

    def _reserve(self, now: float) -> float:
        """The earliest start time for a new request, booking the slot after it."""
        start = max(now, self._paused_until)
        if self._limit is not None:
            start = max(start, self._next_slot)
            self._next_slot = start + 1.0 / self._limit
        return start

    def _record_start(self, now: float) -> None:
        self._starts.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._starts and self._starts[0] < now - OBSERVATION_WINDOW:
            self._starts.popleft()

    def _observed_rate(self, now: float) -> float | None:
        """Requests/second started over the last few seconds, or None without history."""
        self._trim(now)
        if not self._starts:
            return None
        return len(self._starts) / max(now - self._starts[0], MIN_OBSERVED_SPAN)

    def _cut_rate(self, now: float) -> None:
        """Multiplicative decrease: half of min(observed rate, current limit)."""
        candidates = [r for r in (self._observed_rate(now), self._limit) if r is not None]
        base = min(candidates) if candidates else MIN_RATE
        floor = MIN_RATE if self._max_rate is None else min(MIN_RATE, self._max_rate)
        if not self._throttled:
            self._throttled = True
            self._recover_to = self._max_rate if self._max_rate is not None else 2.0 * base
        self._limit = max(floor, base / 2.0)
