"""RateBudget: pacing, shared pauses and AIMD recovery, driven by a fake clock (no real sleeps),
plus one small real-thread check that a pause holds back other threads."""

from __future__ import annotations

import threading
import time

import pytest

from provisioner.ratelimit import RateBudget


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
    assert budget.limit is None and not budget.throttled


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


def test_throttle_pauses_for_retry_after():
    budget, clock = make()
    budget.on_throttle(2.5)
    t0 = clock.now
    budget.acquire()
    assert clock.now == pytest.approx(t0 + 2.5)


def test_throttle_without_retry_after_pauses_one_second():
    budget, clock = make()
    budget.on_throttle(None)
    assert budget.paused_until == pytest.approx(clock.now + 1.0)


def test_throttle_halves_the_observed_rate():
    budget, clock = make()
    burst(budget, clock, 20, 0.05)  # 20 requests/s for one second
    budget.on_throttle(1.0)
    assert budget.throttled
    assert budget.limit == pytest.approx(10.0, rel=0.1)


def test_throttle_halves_the_limit_when_lower_than_observed():
    budget, clock = make(max_rate=4)
    burst(budget, clock, 8, 0.0)
    budget.on_throttle(0.5)
    assert budget.limit == pytest.approx(2.0)


def test_rate_never_drops_below_two_per_second():
    budget, clock = make()
    for _ in range(8):
        budget.acquire()
        budget.on_throttle(0.1)
        clock.advance(5.5)  # past the cut interval: every throttle cuts
    assert budget.limit == pytest.approx(2.0)


def test_a_burst_of_throttles_cuts_once_per_interval():
    budget, clock = make()
    burst(budget, clock, 40, 0.025)  # 40 requests/s
    budget.on_throttle(0.1)
    first = budget.limit
    for _ in range(5):  # more 429s, each after the previous pause ended, within 5 s of the cut
        clock.advance(0.2)
        budget.on_throttle(0.1)
    assert budget.limit == first
    clock.advance(4.0)
    budget.on_throttle(0.1)  # throttling persists: cut again
    assert budget.limit == pytest.approx(first / 2, rel=0.5)


def test_throttles_during_a_pause_cut_only_once():
    budget, clock = make()
    burst(budget, clock, 40, 0.025)  # 40 requests/s
    budget.on_throttle(1.0)
    first = budget.limit
    clock.advance(0.1)
    budget.on_throttle(2.0)  # another in-flight request answered 429
    assert budget.limit == first
    assert budget.paused_until == pytest.approx(clock.now + 2.0)
    assert budget.throttle_count == 2


def test_paced_after_throttle():
    budget, clock = make()
    burst(budget, clock, 8, 0.25)  # 4 requests/s -> limit 2
    budget.on_throttle(1.0)
    resume = budget.paused_until
    starts = []
    for _ in range(3):
        budget.acquire()
        starts.append(clock.now)
    assert starts == pytest.approx([resume, resume + 0.5, resume + 1.0])


def test_additive_recovery_then_unthrottled_without_max_rate():
    budget, clock = make()
    burst(budget, clock, 10, 0.1)  # 10 requests/s
    budget.on_throttle(1.0)        # limit 5, recover above 20
    assert budget.limit == pytest.approx(5.0, rel=0.1)
    start = budget.limit
    budget.on_success()            # during the pause: no growth
    assert budget.limit == start
    clock.advance(1.0 + 3.0)       # pause over, then 3 s without throttling
    budget.on_success()
    assert budget.limit == pytest.approx(start + 3.0 * 2.0)  # a tenth of 20 requests/s per second
    clock.advance(20.0)
    budget.on_success()
    assert not budget.throttled
    assert budget.limit is None


def test_recovery_returns_to_max_rate():
    budget, clock = make(max_rate=6)
    burst(budget, clock, 6, 1 / 6)
    budget.on_throttle(0.5)
    assert budget.limit == pytest.approx(3.0)
    clock.advance(0.5 + 2.0)
    budget.on_success()
    assert budget.throttled and budget.limit == pytest.approx(5.0)
    clock.advance(1.5)
    budget.on_success()
    assert not budget.throttled
    assert budget.limit == 6


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
    budget.on_throttle(1.0)
    t0 = clock.now

    def wait_and_get_throttled_again(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            budget.on_throttle(2.0)  # another worker got a 429 while we were waiting

    budget.acquire(wait=wait_and_get_throttled_again)
    assert clock.now == pytest.approx(t0 + 1.0 + 2.0)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RateBudget(0)
    with pytest.raises(ValueError):
        RateBudget(None, increase=0)


def test_pause_holds_back_other_threads():
    budget = RateBudget(max_rate=1000)  # after the cut: 500/s, so only the pause shows
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
