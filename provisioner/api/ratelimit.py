"""A request-rate budget shared by every worker thread of one run: when the API throttles one worker
(429), all slow down to what it accepts. An AIMD over windows of ``WINDOW`` seconds, made for APIs that
throttle by rate (a token bucket per organization):

* ``acquire()`` keeps starts ``1 / limit`` seconds apart and blocks during a pause (a Retry-After of
  ``LONG_PAUSE`` or more pauses every worker); it fails at once if the pause outlasts the deadline.
* Decrease: more than ``THRESHOLD`` of 429s in a window cuts the limit to ``CUT`` times the rate the
  server accepted in it. If the next window is refused as much below that rate, the refusals do not
  follow the rate (``refusals_random``): the cuts are undone and that share cuts no more (not so after a
  first cut: a token bucket starts full, its burst hides its rate). A window of fewer than
  ``MIN_ANSWERS`` answers is no evidence: a cut being judged waits for the next one.
* Increase: each window adds ``1 - CUT`` of the rate the cut set, up to twice that (or ``max_rate``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

WINDOW = 1.0  # seconds of answers judged together
THRESHOLD = 0.05  # share of 429 answers in a window that cuts the rate
CUT = 0.9  # the cut: this fraction of the rate the server accepted in that window
MIN_ANSWERS = 20  # fewer answers in a window are no evidence either way
MIN_RATE = 2.0  # requests/second the rate is never cut below (unless max_rate is lower)
LONG_PAUSE = 5.0  # a Retry-After this long (seconds) pauses every worker


class RateBudget:
    """Shared, thread-safe start-time budget for HTTP requests (see the module docstring)."""

    def __init__(
        self,
        max_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ):
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be a positive number of requests per second, or None")
        self._max_rate = max_rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.limit = max_rate  # requests/second currently allowed; None: no ceiling at all
        self._next_start = -math.inf
        self.paused_until = -math.inf  # clock time before which no request starts
        self._window = (-math.inf, 0, 0)  # (start, accepted, refused)
        self._first = True  # no cut yet: the first is not judged
        self._cut_to: float | None = None  # the rate the last cut set, while recovering from it
        self._judging = False  # the last window cut the rate: is the next one still refused?
        self._before_cuts = max_rate  # the limit before the cuts
        self._random_share = 0.0  # refusals of this share were found not to follow the rate
        self._raised_at = -math.inf

    def acquire(self, wait: Callable[[float], object] | None = None, deadline: float | None = None) -> bool:
        """Block until a request may start, and count it as started. ``wait(seconds)`` replaces the sleep
        (the client passes ``StopFlag.wait``): a true result means cut short, and acquire returns False,
        as it does at once if the request could start only after ``deadline`` (clock time)."""
        while True:
            with self._lock:
                now = self._clock()
                if deadline is not None and self.paused_until > deadline:
                    return False
                start = max(now, self.paused_until, self._next_start if self.limit else now)
                if start <= now:
                    if self.limit:
                        self._next_start = max(now, self._next_start) + 1.0 / self.limit
                    return True
            if (wait or self._sleep)(start - now):
                return False

    def on_throttle(self, retry_after: float | None = None) -> None:
        """The API answered 429; a long Retry-After pauses everyone."""
        with self._lock:
            now = self._clock()
            self._judge(now, accepted=0, refused=1)
            if retry_after is not None and retry_after >= LONG_PAUSE:
                self.paused_until = max(self.paused_until, now + retry_after)

    def on_success(self) -> None:
        """A request succeeded: grow the limit while recovering, and lift it once recovered."""
        with self._lock:
            now = self._clock()
            self._judge(now, accepted=1, refused=0)
            if self._cut_to is None or self.limit is None:
                return
            self.limit += (1.0 - CUT) * self._cut_to * max(0.0, now - self._raised_at) / WINDOW
            self._raised_at = max(self._raised_at, now)
            if self.limit >= (self._max_rate or 2.0 * self._cut_to):
                self.limit, self._cut_to = self._max_rate, None

    @property
    def refusals_random(self) -> bool:
        """True once the API's 429s were found not to follow the request rate: waiting in place does not help."""
        return self._random_share > 0

    def _judge(self, now: float, accepted: int, refused: int) -> None:
        """Count one answer; when a window has passed, judge it (called with the lock held)."""
        start, ok, refusals = self._window
        if start == -math.inf:
            start = now
        if now < start + WINDOW:
            self._window = (start, ok + accepted, refusals + refused)
            return
        self._window = (now, accepted, refused)
        answered = ok + refusals
        if answered < MIN_ANSWERS:  # no evidence either way: a cut still being judged waits for the next window
            return
        share = refusals / answered
        judging, self._judging = self._judging, False
        if share <= max(THRESHOLD, 2.0 * self._random_share):
            return
        if judging:  # refused as before, below the rate the server accepted: not about the rate
            self._random_share = share
            self.limit, self._cut_to = self._before_cuts, None
            return
        if self._cut_to is None:
            self._before_cuts = self.limit
        rate = CUT * min(ok / (now - start), self.limit or math.inf)
        self.limit = max(min(MIN_RATE, self._max_rate or MIN_RATE), rate)
        self._cut_to, self._raised_at = self.limit, now
        self._judging, self._first = not self._first, False
