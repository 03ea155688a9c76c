"""Request statistics of one run (``as_dict``: by method and status, and retries). Every worker thread
appends its attempts to one deque (appends are thread-safe); the counts are made when they are read.
"""

from __future__ import annotations

from collections import Counter, deque


class RequestStats:
    """Every attempt is a request; every attempt after the first of its call is also a retry."""

    def __init__(self) -> None:
        self._attempts: deque[tuple[str, str, bool]] = deque()  # (method, status or "error", retry)

    def record(self, method: str, status: int | None, retry: bool = False) -> None:
        """Count one attempt; ``status`` None means no HTTP answer (counted as "error")."""
        self._attempts.append((method.upper(), "error" if status is None else str(status), retry))

    def as_dict(self) -> dict:
        """``{"requests": N, "retries": N, "byMethod": {...}, "byStatus": {...}}``, keys sorted."""
        attempts = self._attempts.copy()
        return {
            "requests": len(attempts),
            "retries": sum(1 for _, _, retry in attempts if retry),
            "byMethod": dict(sorted(Counter(m for m, _, _ in attempts).items())),
            "byStatus": dict(sorted(Counter(s for _, s, _ in attempts).items())),
        }


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests``; ``many`` when adding an s does not make the plural."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"
