"""What crosses between ``client.py`` (policy) and ``transport.py`` (the wire), without importing the
HTTP library: commands that never call the API (``validate``, ``render``) do not pay for importing
requests."""

from __future__ import annotations

from collections.abc import Mapping


class Answer:
    """The parts of an HTTP answer the client reads (the body is read in full, and decompressed)."""

    __slots__ = ("status", "content", "headers", "reason")

    def __init__(self, status: int, content: bytes, headers: Mapping[str, str], reason: str):
        self.status = status
        self.content = content
        self.headers = headers
        self.reason = reason or ""


class TransportFailure(Exception):
    """No usable answer. ``ambiguous``: the request may have reached the server; ``retryable``:
    trying again can help (not for a refused certificate or proxy credentials)."""

    def __init__(self, message: str, ambiguous: bool, retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.ambiguous = ambiguous
        self.retryable = retryable
