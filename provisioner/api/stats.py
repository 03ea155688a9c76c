"""Request statistics for one run: how many HTTP requests, by method and status, and how many retries.

The run summary and the JSON output report them, and tests use them to check that retries and
paging did what they should. Every worker thread records into the same instance, so it is locked.
"""

from __future__ import annotations

import threading
from collections import Counter


class RequestStats:
    """Thread-safe counters of HTTP attempts. Every attempt is a request; every attempt after the
    first of its call is also a retry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._by_method: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()

    def record(self, method: str, status: int | None, retry: bool = False) -> None:
        """Count one attempt; ``status`` None means no HTTP answer (counted as "error")."""
        with self._lock:
            self._requests += 1
            if retry:
                self._retries += 1
            self._by_method[method.upper()] += 1
            self._by_status["error" if status is None else str(status)] += 1

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def retries(self) -> int:
        with self._lock:
            return self._retries

    def as_dict(self) -> dict:
        """``{"requests": N, "retries": N, "byMethod": {...}, "byStatus": {...}}``, keys sorted."""
        with self._lock:
            return {
                "requests": self._requests,
                "retries": self._retries,
                "byMethod": dict(sorted(self._by_method.items())),
                "byStatus": dict(sorted(self._by_status.items())),
            }

    def summary(self) -> str:
        """One line, e.g. ``42 requests (GET 3, POST 39), 5 retries``."""
        data = self.as_dict()
        text = plural(data["requests"], "request")
        if data["byMethod"]:
            text += " (" + ", ".join(f"{m} {n}" for m, n in data["byMethod"].items()) + ")"
        return f"{text}, {plural(data['retries'], 'retry', 'retries')}"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests``; ``many`` when adding an s does not make the plural."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"
