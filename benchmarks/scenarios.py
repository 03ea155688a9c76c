"""The benchmark's scenario rows: what each one runs and how its result is judged (issue 8).

``run.py`` runs them (a fresh emulator subprocess with the row's faults, one ``apply`` of N creates)
and hands the measurements here. Everything in this module is a pure function of its arguments, so
the targets live in one place and can be read without the machinery around them:

  latency100  N creates at 100 ms of latency, parallelism 16: 1,000 within 1.1x of floor.py's bare
              client in the same run plus 1 s; 10,000 within 1.15x of ceil(N/16) x 100 ms.
  faults      N creates at 20 ms, the CLI's default settings, faults on POSTs only:
                none (the reference time T), 30% 5xx (<= 3 T), 30% resets (<= 3 T + settle),
                30% lost answers (<= 3 T + settle), 7% each of 5xx, reset, lost and 429
                (<= 4 T + settle), 30% random 429 (converges; no time target).
              Each must converge in ONE run: exit 0, every declared name exactly once.
  ratelimit   N creates against a token bucket of R requests/s: within 1.25 x N/R + ceil(N/16) x
              latency, and after the run's first second at most 10% of its requests answered 429.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from provisioner.emulator.faults import FAULT_ORDER

ROWS = ("scale", "throughput", "latency100", "faults", "ratelimit")
FAULT_RATE = 0.30  # of POSTs, in the single-fault rows
MIX_RATE = 0.07  # of POSTs, for each fault of the mixed row
THROTTLE_AFTER_FIRST_S = 1.0
THROTTLE_SHARE_MAX = 0.10
FLOOR_SIZES = (1000,)  # latency100 sizes judged against the bare client (floor.py) in the same run
FLOOR_FACTOR, FLOOR_SLACK_S = 1.10, 1.0
BOUND_FACTOR = 1.15  # latency100 at other sizes: within this factor of ceil(N/16) x latency


@dataclass(frozen=True)
class Scenario:
    """One row: an apply of ``n`` creates against an emulator started with ``faults``."""

    row: str  # one of ROWS
    label: str
    n: int
    latency_ms: float
    faults: str = ""  # emulator fault settings besides the latency ("" for none)
    cli_args: tuple[str, ...] = ()  # besides the manifest and inputs: () keeps the CLI's defaults
    factor: float | None = None  # faults: time limit = factor x the reference time (+ settle)
    settle: bool = False  # faults: the limit includes one settle wait
    reference: bool = False  # faults: the fault-free run the others are measured against
    rate: float | None = None  # ratelimit: requests/s


@dataclass
class Measured:
    """What one scenario's run gave."""

    seconds: float
    exit_code: int | None  # None: killed after the run timeout
    cli_cpu_s: float
    requests: int
    statuses: dict = field(default_factory=dict)
    name_counts: dict = field(default_factory=dict)  # instance name -> copies in the emulator afterwards
    throttled_after_first_s: tuple[int, int] = (0, 0)  # (429 answers, requests) after the first second


def exclusive_rates(wanted: Mapping[str, float]) -> dict[str, float]:
    """Emulator rates that make each fault hit ``wanted[name]`` of the requests. The emulator draws
    its faults in FAULT_ORDER and the first hit wins, so a later fault's rate applies only to what
    the earlier ones left: 7% each of reset and error needs error=0.07/0.93."""
    rates, left = {}, 1.0
    for name in FAULT_ORDER:
        if name in wanted:
            rates[name] = wanted[name] / left
            left -= wanted[name]
    return rates


def _spec(rates: Mapping[str, float], seed: int) -> str:
    """Emulator fault settings for ``rates`` on POSTs only."""
    return ",".join([f"{name}={rate:.6g}" for name, rate in rates.items()] + ["methods=POST", f"seed={seed}"])


def build(
    rows: Iterable[str],
    *,
    latency100_sizes: Iterable[int],
    parallelism: int,
    fault_n: int,
    fault_latency_ms: float,
    seed: int,
    ratelimit_n: int,
    ratelimit_rps: float,
    ratelimit_burst: float,
) -> list[Scenario]:
    """The scenarios of the selected rows, in the order they run (a fault row's reference first)."""
    rows = set(rows)
    out: list[Scenario] = []
    if "latency100" in rows:
        out += [
            Scenario("latency100", "apply, 100 ms", n, 100.0, cli_args=("--parallelism", str(parallelism)))
            for n in latency100_sizes
        ]
    if "faults" in rows:
        lat, n = fault_latency_ms, fault_n
        out.append(Scenario("faults", "no faults", n, lat, reference=True))
        for label, rates, factor, settle in (
            ("30% 5xx", {"error": FAULT_RATE}, 3.0, False),
            ("30% reset", {"reset": FAULT_RATE}, 3.0, True),
            ("30% lost", {"lost": FAULT_RATE}, 3.0, True),
            (
                "7% each 5xx/reset/lost/429",
                exclusive_rates({"reset": MIX_RATE, "error": MIX_RATE, "throttle": MIX_RATE, "lost": MIX_RATE}),
                4.0,
                True,
            ),
            ("30% random 429", {"throttle": FAULT_RATE}, None, False),
        ):
            out.append(Scenario("faults", label, n, lat, _spec(rates, seed), factor=factor, settle=settle))
    if "ratelimit" in rows:
        burst = f",burst={ratelimit_burst:g}" if ratelimit_burst else ""
        out.append(
            Scenario(
                "ratelimit",
                f"rate limit {ratelimit_rps:g}/s",
                ratelimit_n,
                fault_latency_ms,
                f"ratelimit={ratelimit_rps:g}{burst}",
                rate=ratelimit_rps,
            )
        )
    return out


def expected_names(n: int) -> list[str]:
    """The instance names the benchmark's manifest declares for N customers (run.write_workload)."""
    return [f"helpdesk-c{i:06d}" for i in range(n)]


def convergence(name_counts: Mapping[str, int], n: int) -> dict:
    """Whether the emulator holds every declared instance exactly once, and what is off."""
    declared = set(expected_names(n))
    duplicates = sum(max(0, name_counts.get(name, 0) - 1) for name in declared)
    missing = sum(1 for name in declared if not name_counts.get(name))
    extra = sum(count for name, count in name_counts.items() if name not in declared)
    return {
        "duplicates": duplicates,
        "missing": missing,
        "extra": extra,
        "exactly_once": duplicates == 0 and missing == 0 and extra == 0,
    }


def _log_time(ts: str) -> float:
    """Seconds since the epoch of a request-log timestamp (2024-06-11T10:00:00.123Z)."""
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def throttled_after(requests: list[dict], first_s: float = THROTTLE_AFTER_FIRST_S) -> tuple[int, int]:
    """(429 answers, requests) among the logged requests later than ``first_s`` after the first one."""
    if not requests:
        return 0, 0
    start = min(_log_time(r["ts"]) for r in requests)
    later = [r for r in requests if _log_time(r["ts"]) >= start + first_s]
    return sum(1 for r in later if r["status"] == 429), len(later)


def creates_bound_s(n: int, latency_ms: float, parallelism: int = 16) -> float:
    """ceil(N / P) x latency: N creates, P at a time (the issue's bound for these rows)."""
    return math.ceil(n / parallelism) * latency_ms / 1000.0


def judge(sc: Scenario, m: Measured, reference_s: float | None, settle_s: float) -> dict:
    """The row's target, its limit in seconds, the checks and a verdict ("PASS"/"FAIL"/None).
    ``reference_s``: the fault-free row's time for a fault row, the bare client's for latency100."""
    conv = convergence(m.name_counts, sc.n)
    one_run = m.exit_code == 0 and conv["exactly_once"]
    checks: list[tuple[str, bool]] = []
    limit = None
    if sc.row == "latency100" and sc.n in FLOOR_SIZES and reference_s is not None:
        limit = FLOOR_FACTOR * reference_s + FLOOR_SLACK_S
        checks.append((f"<= {FLOOR_FACTOR:g} x floor {reference_s:.2f} s + {FLOOR_SLACK_S:g} s", m.seconds <= limit))
    elif sc.row == "latency100":
        limit = BOUND_FACTOR * creates_bound_s(sc.n, sc.latency_ms)
        if sc.n == 10000:  # the size: startup swamps the bound below it
            bound = creates_bound_s(sc.n, sc.latency_ms)
            checks.append((f"<= {BOUND_FACTOR:g} x {bound:.2f} s", m.seconds <= limit))
    elif sc.row == "faults" and not sc.reference:
        if sc.factor is not None and reference_s is not None:
            limit = sc.factor * reference_s + (settle_s if sc.settle else 0.0)
            settle = f" + settle {settle_s:g} s" if sc.settle else ""
            checks.append((f"<= {sc.factor:g} x {reference_s:.2f} s{settle}", m.seconds <= limit))
    elif sc.row == "ratelimit":
        limit = 1.25 * sc.n / sc.rate + creates_bound_s(sc.n, sc.latency_ms)
        checks.append(
            (f"<= 1.25 x {sc.n}/{sc.rate:g} + {creates_bound_s(sc.n, sc.latency_ms):.2f} s", m.seconds <= limit)
        )
        throttled, later = m.throttled_after_first_s
        checks.append((f"429 after 1st s <= {THROTTLE_SHARE_MAX:.0%}", throttled <= THROTTLE_SHARE_MAX * later))
    checks.append(("one run, 0 dup", one_run))
    verdict = None if not checks else ("PASS" if all(ok for _, ok in checks) else "FAIL")
    return {
        "target": ", ".join(name + ("" if ok else "!") for name, ok in checks),
        "limit_s": limit,
        "verdict": verdict,
        "converged_in_one_run": one_run,
        **conv,
    }
