"""RateBudget: pacing, shared pauses, AIMD cuts and recovery, driven by a fake clock (no real sleeps),
plus small real-thread checks that a pause holds back other threads and a limit paces them all."""

from __future__ import annotations

import random
import threading
import time

import pytest

from provisioner.api.ratelimit import RateBudget


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self, now: float = 100.0):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(max_rate: float | None = None, **kwargs) -> tuple[RateBudget, FakeClock]:
    clock = FakeClock()
    return RateBudget(max_rate, clock=clock, sleep=clock.sleep, **kwargs), clock


def burst(budget: RateBudget, clock: FakeClock, count: int, spacing: float) -> None:
    """``count`` acquires, ``spacing`` seconds apart."""
    for _ in range(count):
        budget.acquire()
        clock.advance(spacing)


def test_unlimited_budget_never_waits():
    budget, clock = make()
    for _ in range(100):
        assert budget.acquire() is True
    assert clock.sleeps == []
    assert budget.limit is None and budget._cut_to is None


def test_max_rate_spaces_starts():
    budget, clock = make(max_rate=10)
    starts = []
    for _ in range(5):
        budget.acquire()
        starts.append(clock.now)
    assert starts == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])


def test_idle_time_is_not_saved_up_as_a_burst():
    budget, clock = make(max_rate=2)
    budget.acquire()
    clock.advance(60)
    budget.acquire()
    budget.acquire()
    assert clock.sleeps == [pytest.approx(0.5)]


def test_a_long_retry_after_pauses_everyone_a_short_one_only_its_own_request():
    budget, clock = make()
    budget.on_throttle(2.5)  # the throttled request waits 2.5 s itself (the client's retry delay)
    budget.on_throttle(None)
    t0 = clock.now
    budget.acquire()
    assert clock.now == t0
    budget.on_throttle(6.0)  # the server asks everyone to go away for 6 s
    budget.acquire()
    assert clock.now == pytest.approx(t0 + 6.0)


class Bucket:
    """A token-bucket server: ``rate`` requests/s, ``burst`` tokens, refused requests take none."""

    def __init__(self, clock: FakeClock, rate: float, burst: float):
        self.clock, self.rate, self.tokens, self.burst, self.last = clock, rate, burst, burst, clock.now

    def __call__(self) -> bool:
        self.tokens = min(self.burst, self.tokens + (self.clock.now - self.last) * self.rate)
        self.last = self.clock.now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def drive(budget: RateBudget, clock: FakeClock, accept, seconds: float, want: float = 200.0) -> dict:
    """A client wanting ``want`` requests/s against a server deciding with ``accept()``; counts what
    happened after the first second."""
    start = clock.now
    late = refused = accepted = 0
    while clock.now < start + seconds:
        budget.acquire()
        ok = accept()
        if clock.now > start + 1:
            late += 1
            refused += not ok
            accepted += ok
        budget.on_success() if ok else budget.on_throttle(1.0)
        clock.advance(1 / want)
    return {"refused_share": refused / max(1, late), "accepted_rate": accepted / max(1, seconds - 1)}


def test_only_a_long_retry_after_pauses_everyone():
    budget, clock = make()
    budget.on_throttle(6.0)
    until = budget.paused_until
    clock.advance(0.1)
    budget.on_throttle(2.0)  # another in-flight request answered 429: it waits its own Retry-After
    assert budget.paused_until == until
    budget.on_throttle(60.0)  # the server asks everyone to go away for a minute
    assert budget.paused_until == pytest.approx(clock.now + 60.0)


def test_a_token_bucket_is_tracked_closely():
    """A server accepting 50 requests/s (bucket of 50) and a client wanting 200/s: after the first
    second, few requests are refused and most of the capacity is used."""
    budget, clock = make()
    seen = drive(budget, clock, Bucket(clock, 50, 50), 30)
    assert seen["refused_share"] < 0.10
    assert seen["accepted_rate"] > 0.8 * 50
    assert budget._cut_to is not None and budget.limit < 70
    assert not budget.refusals_random  # a create refused by this server waits in place (client._call)


def test_random_refusals_do_not_collapse_the_rate():
    """A server refusing 30% of requests whatever the rate: the cut is found useless and undone."""
    budget, clock = make()
    dice = random.Random(7)
    seen = drive(budget, clock, lambda: dice.random() >= 0.3, 20)
    assert seen["accepted_rate"] > 0.6 * 0.7 * 200
    assert budget.limit is None and budget.refusals_random


def test_refusals_at_a_steady_share_never_collapse_the_rate_and_never_pause():
    """7% refused whatever the rate, near the threshold: a cut now and then, undone once a window
    after a cut is refused as much; the rate stays near what the client wants, and nothing pauses
    (a 1 s Retry-After is the request's own)."""
    budget, clock = make()
    dice = random.Random(3)
    seen = drive(budget, clock, lambda: dice.random() >= 0.07, 20)
    assert seen["accepted_rate"] > 0.8 * 0.93 * 200
    assert budget.limit is None or budget.limit > 150
    assert budget.paused_until == -float("inf")


def test_a_quiet_window_after_a_cut_does_not_end_its_judging():
    """A lull (an apply between two rounds) after a cut is no evidence either way: the next busy window,
    refused as much below the cut rate, still shows that the refusals do not follow the rate."""
    budget, clock = make()
    dice = random.Random(11)
    drive(budget, clock, lambda: dice.random() >= 0.3, 2.02)  # the first cut (not judged), then a second one
    cut = budget.limit
    assert cut is not None and not budget.refusals_random
    for _ in range(5):  # a quiet window: five answers in 1.5 s
        budget.on_success()
        clock.advance(0.3)
    assert budget._cut_to is not None and not budget.refusals_random  # still cut, still being judged
    drive(budget, clock, lambda: dice.random() >= 0.3, 1.1, want=cut)
    assert budget.limit is None and budget.refusals_random


def test_a_few_answers_are_no_evidence():
    budget, clock = make()
    for _ in range(5):  # 3 of 5 refused in each window: too few answers to judge the rate by
        for ok in (True, False, True, False, False):
            budget.on_success() if ok else budget.on_throttle(1.0)
            clock.advance(0.3)
    assert budget.limit is None


def test_the_rate_never_drops_below_two_per_second():
    budget, clock = make()
    drive(budget, clock, Bucket(clock, 0.5, 1), 20)
    assert budget.limit is not None and budget.limit >= 2.0


def test_a_burst_of_throttles_cuts_once_per_window():
    budget, clock = make()
    bucket = Bucket(clock, 50, 50)
    drive(budget, clock, bucket, 1.2)
    cuts = budget.limit
    for _ in range(30):  # many 429s within the interval: no further cut
        budget.on_throttle(1.0)
    assert budget.limit == cuts


def test_recovery_returns_to_max_rate():
    budget, clock = make(max_rate=100)
    drive(budget, clock, Bucket(clock, 40, 40), 5, want=100)
    assert budget._cut_to is not None and budget.limit < 60
    drive(budget, clock, lambda: True, 120, want=100)  # the limit was lifted on the server
    assert budget._cut_to is None and budget.limit == 100


def test_wait_function_can_abandon_the_acquire():
    budget, clock = make()
    budget.on_throttle(30.0)
    waited = []

    def interrupted_wait(seconds: float) -> bool:
        waited.append(seconds)
        return True

    assert budget.acquire(wait=interrupted_wait) is False
    assert waited == [pytest.approx(30.0)]


def test_reservation_made_before_a_throttle_is_renewed():
    budget, clock = make()
    budget.on_throttle(6.0)
    t0 = clock.now

    def wait_and_get_throttled_again(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            budget.on_throttle(8.0)  # another worker was told to go away for 8 s while we waited

    budget.acquire(wait=wait_and_get_throttled_again)
    assert clock.now == pytest.approx(t0 + 6.0 + 8.0)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RateBudget(0)
    with pytest.raises(ValueError):
        RateBudget(-5)


def test_pause_holds_back_other_threads(monkeypatch):
    monkeypatch.setattr("provisioner.api.ratelimit.LONG_PAUSE", 0.2)  # a "long" Retry-After, kept short for the test
    budget = RateBudget(max_rate=1000)
    budget.on_throttle(0.3)
    t0 = time.monotonic()
    started: list[float] = []

    def worker() -> None:
        budget.acquire()
        started.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(started) == 4
    assert min(started) - t0 >= 0.25


def test_concurrent_acquires_respect_max_rate():
    budget = RateBudget(max_rate=100)
    started: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            budget.acquire()
            with lock:
                started.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    started.sort()
    assert len(started) == 20
    assert started[-1] - started[0] >= 19 * 0.01 * 0.9
