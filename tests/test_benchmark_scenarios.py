"""The benchmark's scenario judging (benchmarks/scenarios.py): pure functions, checked against the
emulator's own fault draws and request-log format so that the benchmark measures what it says."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from provisioner.emulator.faults import FaultConfig, FaultDecider

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import scenarios  # noqa: E402


def test_exclusive_rates_give_each_fault_its_share_of_posts():
    rates = scenarios.exclusive_rates({"reset": 0.07, "error": 0.07, "throttle": 0.07, "lost": 0.07})
    assert rates["reset"] == pytest.approx(0.07) and rates["error"] == pytest.approx(0.07 / 0.93)
    decider = FaultDecider(FaultConfig.parse(scenarios._spec(rates, seed=3)))
    draws = 40_000
    counts = Counter(decider.decide("POST").fault for _ in range(draws))
    for fault in ("reset", "error", "throttle", "lost"):
        assert counts[fault] / draws == pytest.approx(0.07, abs=0.005), counts
    assert Counter(decider.decide("GET").fault for _ in range(1000)) == {None: 1000}  # POSTs only


def test_convergence_counts_duplicates_missing_and_extra():
    names = scenarios.expected_names(3)
    assert names == ["helpdesk-c000000", "helpdesk-c000001", "helpdesk-c000002"]
    assert scenarios.convergence({n: 1 for n in names}, 3)["exactly_once"]
    off = scenarios.convergence({names[0]: 3, names[1]: 1, "stranger": 2}, 3)
    assert (off["duplicates"], off["missing"], off["extra"], off["exactly_once"]) == (2, 1, 2, False)


def test_throttled_after_the_first_second_reads_the_request_log():
    log = [
        {"ts": "2024-06-11T10:00:00.100Z", "status": 429},
        {"ts": "2024-06-11T10:00:00.900Z", "status": 429},
        {"ts": "2024-06-11T10:00:01.100Z", "status": 200},
        {"ts": "2024-06-11T10:00:01.500Z", "status": 429},
        {"ts": "2024-06-11T10:00:02.000Z", "status": 200},
    ]
    assert scenarios.throttled_after(log) == (1, 3)
    assert scenarios.throttled_after([]) == (0, 0)


def _measured(seconds: float, exit_code: int = 0, n: int = 10, throttled=(0, 0)) -> scenarios.Measured:
    counts = {name: 1 for name in scenarios.expected_names(n)}
    return scenarios.Measured(seconds, exit_code, 1.0, 100, {}, counts, throttled)


def test_targets_of_the_issue():
    rows = scenarios.build(
        ["latency100", "faults", "ratelimit"],
        latency100_sizes=[1000, 10000],
        parallelism=16,
        fault_n=10,
        fault_latency_ms=20,
        seed=1,
        ratelimit_n=10,
        ratelimit_rps=100,
        ratelimit_burst=0,
    )
    by_label = {sc.label: sc for sc in rows}
    assert [sc.row for sc in rows] == ["latency100"] * 2 + ["faults"] * 6 + ["ratelimit"]
    assert rows[2].reference and by_label["30% 5xx"].faults == "error=0.3,methods=POST,seed=1"
    latency = scenarios.judge(rows[0], _measured(8.1, n=1000), 6.5, 30)  # 1.1 x the bare client's 6.5 s + 1 s
    assert latency["verdict"] == "PASS" and latency["limit_s"] == pytest.approx(8.15)
    assert scenarios.judge(rows[0], _measured(8.2, n=1000), 6.4, 30)["verdict"] == "FAIL"
    big = scenarios.judge(rows[1], _measured(71.8, n=10000), 6.4, 30)  # 1.15 x 625 x 0.1 s = 71.875 s
    assert big["verdict"] == "PASS" and big["limit_s"] == pytest.approx(71.875)
    assert scenarios.judge(rows[1], _measured(72.0, n=10000), None, 30)["verdict"] == "FAIL"
    reset = by_label["30% reset"]
    assert scenarios.judge(reset, _measured(32.9), 1.0, 30)["verdict"] == "PASS"  # 3 x 1 s + 30 s
    assert scenarios.judge(reset, _measured(33.1), 1.0, 30)["verdict"] == "FAIL"
    assert scenarios.judge(reset, _measured(2.0, exit_code=1), 1.0, 30)["verdict"] == "FAIL"  # not in one run
    assert scenarios.judge(by_label["30% 5xx"], _measured(3.1), 1.0, 30)["verdict"] == "FAIL"  # no settle
    assert scenarios.judge(by_label["7% each 5xx/reset/lost/429"], _measured(33.9), 1.0, 30)["verdict"] == "PASS"
    limit = rows[-1]  # 1.25 x 10/100 + 1 x 20 ms
    assert scenarios.judge(limit, _measured(0.14, throttled=(1, 10)), None, 30)["verdict"] == "PASS"
    assert scenarios.judge(limit, _measured(0.14, throttled=(2, 10)), None, 30)["verdict"] == "FAIL"
    assert scenarios.judge(limit, _measured(0.15), None, 30)["verdict"] == "FAIL"
