"""A request-rate budget shared by every worker thread of one run.

Cloud Elements does not document a rate limit, but an API may still answer 429, and real APIs
throttle by rate (a token bucket per organization), not by dice. When one worker is throttled,
every worker must slow down to what the server accepts, otherwise each of them gets its own 429.
``RateBudget`` is that shared brake, using AIMD (additive increase, multiplicative decrease):

* ``acquire()`` blocks until a request may start: never during a pause, and never closer than
  ``1 / limit`` seconds after the previous start while a limit is in force. It gives up at once
  when the pause outlasts the caller's deadline (a day-long Retry-After fails a request, it does
  not freeze it).
* ``on_throttle(retry_after)``: a 429 delays its own request (the client honours its Retry-After);
  one asking for ``LONG_PAUSE`` or more pauses every worker (the server asks everyone to go away).
  The rate is cut when the share of requests refused over the last second reaches ``CUT_THRESHOLD``
  (``RECUT_THRESHOLD`` once a cut has shown the refusals follow the rate), at most once per
  ``CUT_INTERVAL``, to 90% of the rate the server accepted over that second: what a token bucket lets
  through. A short pause for everyone would only let the bucket refill and be drained again by a
  burst. If the share stays the same right after a cut, the refusals do not depend on the rate (an
  API that throttles at random): the cut is undone and the rate left alone while the share stays there.
* ``on_success()`` raises the limit by ``RECOVERY_FRACTION`` of the rate at the last cut per
  second; once it passes ``max_rate`` (or, without one, twice the rate at which throttling began)
  the budget is back to its unthrottled state.

The logic is pure: the clock and the sleep function are injectable, so tests drive it with a fake
clock and no real waiting.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

# How long answers are remembered, in seconds (the share of refusals since a cut looks back this far).
OBSERVATION_WINDOW = 5.0
# How far back the accepted and refused shares look when deciding a cut.
ACCEPTED_WINDOW = 1.0
# Cut to this fraction of the accepted rate.
CUT_FACTOR = 0.9
# Cut only when at least this share of the requests of the last second were refused.
CUT_THRESHOLD = 0.08
# Once a cut has been shown to work (a real limit), a smaller share cuts again: the recovery has
# gone past the limit.
RECUT_THRESHOLD = 0.05
# ... and at least this many requests were answered in it (a share of three is no evidence).
MIN_EVIDENCE = 60
# How long refusals found not to depend on the rate are ignored (while their share stays there).
RANDOM_HOLD = 30.0
# A Retry-After this long pauses every worker even while already throttled.
LONG_PAUSE = 5.0
# Pause used when a 429 carries no Retry-After.
DEFAULT_PAUSE = 1.0
# The rate is never cut below this (requests/second), unless max_rate itself is lower.
MIN_RATE = 2.0
# A burst of 429s cuts the rate once: another cut needs throttling to persist this long after it.
CUT_INTERVAL = 1.0
# Recovery per second, as a fraction of the limit set by the last cut.
RECOVERY_FRACTION = 0.02


class RateBudget:
    """Shared, thread-safe start-time budget for HTTP requests (see the module docstring)."""

    def __init__(
        self,
        max_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        *,
        increase: float | None = None,
    ):
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be a positive number of requests per second, or None")
        if increase is not None and not increase > 0:
            raise ValueError("increase must be positive")
        self._clock = clock
        self._sleep = sleep
        self._increase = increase
        self._max_rate = max_rate
        self._lock = threading.Lock()
        self._limit: float | None = max_rate  # None: no ceiling at all
        self._throttled = False  # in AIMD recovery
        self._recover_to: float | None = None  # leave recovery once the limit passes this
        self._paused_until = -math.inf
        self._next_slot = -math.inf
        self._last_increase = -math.inf
        self._epoch = 0  # bumped by each throttle: reservations before it are void
        self._last_cut = -math.inf
        self._answers: deque[tuple[float, bool]] = deque()  # (time, accepted) over OBSERVATION_WINDOW
        self._cut_to: float | None = None  # the limit the last cut set
        self._share_at_cut: float | None = None  # refused share that triggered the last cut
        self._before_cuts: float | None = None  # the limit before this episode of cuts
        self._random_until = -math.inf  # refusals found not to depend on the rate...
        self._random_share = 0.0  # ...at this share
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
                    return True
            if wait(start - now):
                return False
            with self._lock:
                if self._epoch == epoch:  # no throttle arrived while we waited: the slot still holds
                    return True

    def on_throttle(self, retry_after: float | None = None) -> None:
        """The API answered 429: pause everyone on the first one (or on a long Retry-After); cut the
        rate when refusals are frequent and respond to the rate."""
        with self._lock:
            now = self._clock()
            pause = retry_after if retry_after is not None and retry_after > 0 else DEFAULT_PAUSE
            self._throttle_count += 1
            self._answer(now, False)
            random = now < self._random_until
            if pause >= LONG_PAUSE and now + pause > self._paused_until:
                self._pause(now, pause)
            if now - self._last_cut < CUT_INTERVAL:
                return
            if self._share_at_cut is not None:  # judge the last cut first, once it has had time to work
                if self._evidence_since_cut() < MIN_EVIDENCE:
                    return
                if self._rate_independent(now):
                    self._undo_cuts(now)
                    return
            share, answered = self._refused_share()
            threshold = RECUT_THRESHOLD if self._throttled else CUT_THRESHOLD
            if answered < MIN_EVIDENCE or share < threshold or (random and share <= 2 * self._random_share):
                return
            self._cut_rate(now, share)
            self._last_cut = now

    def on_success(self) -> None:
        """A request succeeded: remember when, grow the limit additively, and lift it once recovered."""
        with self._lock:
            now = self._clock()
            self._answer(now, True)
            if not self._throttled or now <= self._last_increase:
                return
            assert self._limit is not None and self._recover_to is not None  # both set while throttled
            step = (
                self._increase
                if self._increase is not None
                else max(0.5, RECOVERY_FRACTION * (self._cut_to or MIN_RATE))
            )
            self._limit += step * (now - self._last_increase)
            self._last_increase = now
            if self._limit > self._recover_to:
                self._leave_throttled()

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

    def _pause(self, now: float, pause: float) -> None:
        self._paused_until = max(self._paused_until, now + pause)
        self._next_slot = self._paused_until
        self._last_increase = max(self._last_increase, self._paused_until)
        self._epoch += 1

    def _answer(self, now: float, accepted: bool) -> None:
        self._answers.append((now, accepted))
        while self._answers and self._answers[0][0] < now - OBSERVATION_WINDOW:
            self._answers.popleft()

    def _refused_share(self, since: float | None = None) -> tuple[float, int]:
        """(share refused, number answered) over the last ``ACCEPTED_WINDOW``, or since ``since``."""
        start = self._clock() - ACCEPTED_WINDOW if since is None else since
        answers = [ok for t, ok in self._answers if t >= start]
        refused = sum(1 for ok in answers if not ok)
        return (refused / len(answers) if answers else 0.0), len(answers)

    def _evidence_since_cut(self) -> int:
        return self._refused_share(since=self._last_cut + CUT_INTERVAL / 2)[1]

    def _rate_independent(self, now: float) -> bool:
        """Right after a cut (no recovery yet), once the cut has had time to work, is the refused
        share still about what it was at the cut? Then the rate is not why requests are refused."""
        if self._share_at_cut is None or self._cut_to is None or self._limit is None:
            return False
        share, answered = self._refused_share(since=self._last_cut + CUT_INTERVAL / 2)
        fresh = self._limit <= 1.1 * self._cut_to and answered >= MIN_EVIDENCE
        return fresh and 0.6 * self._share_at_cut <= share <= 1.5 * self._share_at_cut

    def _undo_cuts(self, now: float) -> None:
        """The refusals do not depend on our rate: restore the rate from before the cuts."""
        self._random_until = now + RANDOM_HOLD
        self._random_share = self._refused_share(since=self._last_cut + CUT_INTERVAL / 2)[0]
        if self._before_cuts is None:
            self._leave_throttled()
        else:
            self._limit = self._before_cuts
            self._share_at_cut = None

    def _leave_throttled(self) -> None:
        self._throttled = False
        self._limit = self._max_rate
        self._recover_to = None
        self._cut_to = None
        self._share_at_cut = None
        self._before_cuts = None

    def _cut_rate(self, now: float, share: float) -> None:
        """Multiplicative decrease: 90% of what the server accepted over the last second."""
        accepted = sum(1 for t, ok in self._answers if ok and t >= now - ACCEPTED_WINDOW) / ACCEPTED_WINDOW
        base = CUT_FACTOR * (min(accepted, self._limit) if self._limit is not None else accepted)
        floor = MIN_RATE if self._max_rate is None else min(MIN_RATE, self._max_rate)
        if not self._throttled:
            self._throttled = True
            self._before_cuts = self._limit
            self._recover_to = self._max_rate if self._max_rate is not None else 2.0 * max(base, floor)
        self._limit = max(floor, base)
        self._cut_to = self._limit
        self._share_at_cut = share
        self._random_until = -math.inf  # refusals grew past the random share: they are about the rate
        self._last_increase = max(self._last_increase, now)
