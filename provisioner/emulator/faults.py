"""Fault injection for the emulator.

A real Cloud Elements endpoint is slow now and then, throttles, fails with 5xx, drops connections
before or after it did the work. The provisioner must survive all of that, and the only way to test
it is an emulator that misbehaves on purpose, reproducibly. ``FaultConfig`` says how often each
fault happens; ``FaultDecider`` turns it into one decision per request from a seeded random stream
(fixed number of draws per request, in a fixed order), so the same seed and the same request
sequence give the same faults. Real APIs also throttle by rate, not by dice: ``RateLimiter`` is a
token bucket per organization that answers 429 once a client sends faster than the limit.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

ENV_VAR = "PROVISIONER_EMULATOR_FAULTS"
FAULT_ORDER = ("reset", "error", "throttle", "lost", "slow")  # the order faults are decided in; the first wins
ERROR_STATUSES = (500, 502, 503)
_INJECTED = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable"}
KNOWN_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")  # ``methods=`` takes a subset
_RATE_FIELDS = ("error_rate", "throttle_rate", "reset_rate", "lost_rate", "slow_rate")
# Short names of the text syntax (also accepted by ``merged``) -> dataclass fields.
_PAIRS = "latency:latency_ms jitter:jitter_ms error:error_rate throttle:throttle_rate retry_after:retry_after"
_PAIRS += " reset:reset_rate lost:lost_rate slow:slow_rate slow_ms:slow_ms methods:methods ratelimit:ratelimit_rps"
ALIASES = {short: name for short, name in (pair.split(":") for pair in f"{_PAIRS} burst:burst seed:seed".split())}
_SHORT = {field_name: short for short, field_name in ALIASES.items()}


def _field_name(key: str) -> str:
    """Map a short name or a field name to the dataclass field; ValueError for anything else."""
    key = key.strip()
    if key in ALIASES or key in _SHORT:
        return ALIASES.get(key, key)
    raise ValueError(f"unknown fault setting {key!r} (known: {', '.join(ALIASES)})")


def _parse_value(field_name: str, text: str) -> float | int | tuple[str, ...]:
    """Parse one value of the text syntax; rates may be written as percentages ("10%")."""
    text, name = text.strip(), _SHORT[field_name]
    if field_name == "methods":  # "POST+DELETE" -> ("POST", "DELETE")
        methods = tuple(dict.fromkeys(m.strip().upper() for m in text.split("+") if m.strip()))
        if not methods or any(m not in KNOWN_METHODS for m in methods):
            raise ValueError(
                f"fault setting 'methods' takes methods joined by '+' (e.g. POST+DELETE) from "
                f"{', '.join(KNOWN_METHODS)}, got {text!r}"
            )
        return methods
    kind = "an integer" if field_name == "seed" else "a number"
    scale = 0.01 if field_name in _RATE_FIELDS and text.endswith("%") else 1.0
    try:
        return int(text) if field_name == "seed" else float(text.removesuffix("%") if scale != 1 else text) * scale
    except ValueError:
        raise ValueError(f"fault setting {name!r} must be {kind}, got {text!r}") from None


def _check(field_name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is acceptable for ``field_name``."""
    name = _SHORT[field_name]
    if field_name == "methods":
        if not isinstance(value, tuple) or any(m not in KNOWN_METHODS for m in value):
            known = ", ".join(KNOWN_METHODS)
            raise ValueError(f"fault setting {name!r} must be a tuple of methods from {known}, got {value!r}")
    elif field_name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"fault setting {name!r} must be an integer or None, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"fault setting {name!r} must be a finite number, got {value!r}")
    elif field_name in _RATE_FIELDS and not 0.0 <= value <= 1.0:
        raise ValueError(f"fault setting {name!r} is a rate and must be between 0 and 1, got {value!r}")
    elif value < 0:
        raise ValueError(f"fault setting {name!r} must not be negative, got {value!r}")
    elif field_name == "burst" and 0 < value < 1:
        raise ValueError(f"fault setting {name!r} must be at least 1 (or 0 for the default), got {value!r}")


@dataclass(frozen=True)
class FaultConfig:
    """How often the emulator misbehaves. Everything defaults to off.

    Durations are milliseconds except ``retry_after`` (seconds, sent in the Retry-After header);
    rates are probabilities in [0, 1] per request. ``methods`` limits the random faults (not latency,
    not the rate limit) to requests with those methods; empty means every method. ``ratelimit_rps``
    is a token bucket per organization: that many requests per second, ``burst`` at once (0: one
    second's worth, at least 1).
    """

    latency_ms: float = 0
    jitter_ms: float = 0
    error_rate: float = 0
    throttle_rate: float = 0
    retry_after: float = 1.0
    reset_rate: float = 0
    lost_rate: float = 0
    slow_rate: float = 0
    slow_ms: float = 3000
    methods: tuple[str, ...] = ()
    ratelimit_rps: float = 0
    burst: float = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    @classmethod
    def parse(cls, text: str | None) -> FaultConfig:
        """Parse "latency=20,jitter=5,error=0.1,...,seed=42". Empty text means no faults."""
        values: dict[str, Any] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            key, sep, raw = part.partition("=")
            if not sep:
                raise ValueError(f"fault setting {part.strip()!r} is not of the form key=value")
            name = _field_name(key)
            if name in values:
                raise ValueError(f"fault setting {_SHORT[name]!r} is given twice")
            values[name] = _parse_value(name, raw)
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultConfig:
        """Read PROVISIONER_EMULATOR_FAULTS (same syntax as ``parse``); unset or empty: no faults."""
        try:
            return cls.parse(environ.get(ENV_VAR))
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}: {exc}") from None

    def merged(self, **overrides: object) -> FaultConfig:
        """A copy with ``overrides`` applied (short or field names); None values are ignored, so
        unset CLI flags can be passed through as they are."""
        changes: dict[str, Any] = {_field_name(key): value for key, value in overrides.items() if value is not None}
        return replace(self, **changes)

    @property
    def active(self) -> bool:
        """True if any fault or latency is switched on."""
        return any(getattr(self, name) > 0 for name in _RATE_FIELDS + ("latency_ms", "jitter_ms", "ratelimit_rps"))

    @property
    def bucket_size(self) -> float:
        """The rate limit's burst: ``burst``, or one second's worth of requests (at least 1)."""
        return self.burst if self.burst else max(1.0, self.ratelimit_rps)

    def describe(self) -> str:
        """One line for humans, e.g. "latency 20 ms ± 5 ms, error 10%, seed 42" or "no faults"."""
        parts = []
        if self.latency_ms or self.jitter_ms:
            parts.append(f"latency {self.latency_ms:g} ms" + (f" ± {self.jitter_ms:g} ms" if self.jitter_ms else ""))
        for name, rate, detail in (
            ("error", self.error_rate, ""),
            ("throttle", self.throttle_rate, f" (Retry-After {self.retry_after:g} s)"),
            ("reset", self.reset_rate, ""),
            ("lost", self.lost_rate, ""),
            ("slow", self.slow_rate, f" ({self.slow_ms:g} ms)"),
        ):
            if rate:
                parts.append(f"{name} {rate * 100:g}%{detail}")
        if self.methods and any(getattr(self, name) for name in _RATE_FIELDS):
            parts.append(f"faults only on {'/'.join(self.methods)}")
        if self.ratelimit_rps:
            parts.append(f"rate limit {self.ratelimit_rps:g}/s per organization (burst {self.bucket_size:g})")
        if parts and self.seed is not None:
            parts.append(f"seed {self.seed}")
        return ", ".join(parts) or "no faults"


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one request: a fault name (or None), the latency to add and, for an
    injected answer ("error", "throttle", "ratelimit"), its status, message and Retry-After."""

    fault: str | None = None
    delay_s: float = 0.0
    status: int | None = None
    message: str = ""
    retry_after: str | None = None


NO_FAULT = FaultDecision()


class RateLimiter:
    """A token bucket per key (the organization secret): ``rate`` tokens a second, at most
    ``size`` saved up, full at first. A request takes a token; without one it is refused, and takes
    nothing (a refused request does not push the next token further away). Not thread-safe: the
    emulator calls it under its one lock."""

    def __init__(self, rate: float, size: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.size = size
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: bytes) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until there will be."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.size, now))
        tokens = min(self.size, tokens + (now - at) * self.rate)
        taken = 1.0 if tokens >= 1.0 else 0.0
        self._buckets[key] = (tokens - taken, now)
        return 0.0 if taken else (1.0 - tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """Retry-After for a wait: whole seconds, rounded up, at least 1. RFC 9110 allows only an
    integer (delay-seconds) and real servers send one; a client that waits that long finds the
    bucket refilled by then, as long as the burst holds at least one second's worth."""
    return str(max(1, math.ceil(wait_s - 1e-9)))


class FaultDecider:
    """Draws one ``FaultDecision`` per request from a ``random.Random(seed)``.

    Every request takes exactly seven draws, in a fixed order (jitter, reset, error, throttle, lost,
    slow, error status), whatever the outcome and whatever its method, so a decision depends only on
    the seed and on how many requests came before it. The rate limiter, if any, lives as long as the
    decider (a new fault configuration starts with full buckets). Not thread-safe: the emulator
    decides under its one lock.
    """

    def __init__(self, config: FaultConfig):
        self.config = config
        self._rng = random.Random(config.seed)
        self.limiter = RateLimiter(config.ratelimit_rps, config.bucket_size) if config.ratelimit_rps else None

    def decide(self, method: str | None = None) -> FaultDecision:
        """The decision for the next request (random faults only for ``config.methods``, if set)."""
        cfg = self.config
        if not cfg.active:
            return NO_FAULT
        r_jitter, r_reset, r_error, r_throttle, r_lost, r_slow, r_status = (self._rng.random() for _ in range(7))
        delay_s = max(0.0, cfg.latency_ms + (2.0 * r_jitter - 1.0) * cfg.jitter_ms) / 1000.0
        if cfg.methods and method not in cfg.methods:
            return FaultDecision(None, delay_s)
        draws = {"reset": r_reset, "error": r_error, "throttle": r_throttle, "lost": r_lost, "slow": r_slow}
        fault = next((name for name in FAULT_ORDER if draws[name] < getattr(cfg, f"{name}_rate")), None)
        if fault == "error":
            status = ERROR_STATUSES[min(int(r_status * len(ERROR_STATUSES)), len(ERROR_STATUSES) - 1)]
            return FaultDecision(fault, delay_s, status, f"{_INJECTED[status]} (injected by the emulator)")
        if fault == "throttle":
            retry = f"{cfg.retry_after:g}"
            return FaultDecision(fault, delay_s, 429, f"Too many requests: retry after {retry} seconds", retry)
        return FaultDecision(fault, delay_s)

    def rate_limited(self, decision: FaultDecision, organization: bytes) -> FaultDecision:
        """The rate limit, checked when a request reaches the API (after its latency; not for the
        faults that stop it before): without a token, a "ratelimit" decision that answers 429."""
        if self.limiter is None or decision.fault in ("reset", "error", "throttle"):
            return decision
        wait = self.limiter.take(organization)
        if not wait:
            return decision
        retry, rps = retry_after_header(wait), self.config.ratelimit_rps
        message = f"Rate limit exceeded: at most {rps:g} requests per second for this organization; "
        message += f"retry after {retry} seconds"
        return replace(decision, fault="ratelimit", status=429, message=message, retry_after=retry)
