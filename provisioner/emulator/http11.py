"""HTTP/1.1 request framing for the emulator: just as much of RFC 9112 as its clients use.

The emulator serves every connection from one asyncio event loop (``server.py``), so it cannot
block on a socket the way ``http.server`` does: bytes arrive in pieces and ``RequestReader`` cuts
whole requests out of them, one at a time and in order (pipelined requests wait their turn). It
parses the request line and headers (decoded as latin-1, so ``Api`` can recover the bytes a client
sent), and bodies framed by Content-Length or chunked. The limits and error answers are those
``http.server`` had: request line over 64 KiB -> 414, a header line over 64 KiB or too many headers
-> 431, a malformed request line or header -> 400, an unknown method -> 501 (``BadRequest``: answer
and close, not logged); a bad Content-Length or chunked framing -> 400, a body over the limit -> 413
(``BodyError``: answered like any request, logged, then the connection closes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 65536  # longest request line or header line, its line ending included (as http.server)
MAX_HEADERS = 100  # header lines, the blank line that ends them included (as http.client)
MAX_CHUNK_LINE = 1026  # longest chunk-size line
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_HEAD_END = re.compile(rb"\n\r?\n")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # printable ASCII but ":" (what http.client took)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class BadRequest(Exception):
    """The request cannot be framed: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str | None = None, method: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method


class BodyError(Exception):
    """The body cannot be read as its headers say: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class CloseSilently(Exception):
    """A blank request line: close without an answer (what http.server did)."""


class Headers(dict):
    """Header fields by lower-cased name, first occurrence kept; lookups ignore case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]  # str keys only
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


@dataclass
class Head:
    """A parsed request line and header block."""

    method: str
    target: str
    headers: Headers
    keep_alive: bool
    expect_continue: bool


def _version(word: str) -> tuple[int, int]:
    """(major, minor) of "HTTP/x.y"; BadRequest 400 for anything else, 505 for HTTP/2 and later."""
    number = word[5:] if word.startswith("HTTP/") else ""
    parts = number.split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        raise BadRequest(400, f"Bad request version ({word!r})")
    version = int(parts[0]), int(parts[1])
    if version >= (2, 0):
        raise BadRequest(505, f"Invalid HTTP version ({number})")
    return version


def parse_request_line(line: str) -> tuple[str, str, tuple[int, int]]:
    """(method, target, version) of a request line, checked as http.server did."""
    line = line.rstrip("\r\n")
    words = line.split()
    if not words:
        raise CloseSilently()
    if len(words) != 3:
        raise BadRequest(400, f"Bad request syntax ({line!r})")
    method, target, version = words[0], words[1], _version(words[2])
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    return method, target, version


def parse_fields(lines: list[str], method: str) -> Headers:
    """The header block's lines (latin-1 text, line endings removed) as ``Headers``."""
    if len(lines) >= MAX_HEADERS:
        raise BadRequest(431, "Too many headers", method)
    headers = Headers()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise BadRequest(400, f"Bad header line ({line[:100]!r})", method)
        key = name.lower()
        if key not in headers:
            dict.__setitem__(headers, key, value.strip(" \t"))
    return headers


def _tokens(value: str | None) -> set[str]:
    """The comma-separated tokens of a header value, lower-cased."""
    return {t.strip() for t in value.lower().split(",")} if value else set()


def accepts_gzip(value: str | None) -> bool:
    """True if an Accept-Encoding value accepts gzip: ``gzip`` (or ``x-gzip``) with a q-value above 0,
    or ``*`` above 0 when gzip is not named (RFC 9110, 12.5.3)."""
    if not value:
        return False
    weights: dict[str, float] = {}
    for item in value.lower().split(","):
        coding, *params = (piece.strip() for piece in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        weights.setdefault("gzip" if coding == "x-gzip" else coding, weight)
    if "gzip" in weights:
        return weights["gzip"] > 0
    return weights.get("*", 0.0) > 0


def make_head(method: str, target: str, version: tuple[int, int], headers: Headers) -> Head:
    """Keep-alive (HTTP/1.1 default, ``Connection`` overrides) and Expect: 100-continue."""
    if method not in METHODS:
        raise BadRequest(501, f"Unsupported method ({method!r})", method)
    connection = _tokens(headers.get("connection"))
    keep_alive = version >= (1, 1)
    if "close" in connection:
        keep_alive = False
    elif "keep-alive" in connection:
        keep_alive = True
    expect = (headers.get("expect") or "").lower() == "100-continue" and version >= (1, 1)
    return Head(method, target, headers, keep_alive, expect)


class RequestReader:
    """The bytes of one connection, cut into requests: ``read_head`` then ``read_body``.

    Both return None until enough bytes have arrived (``buffer`` grows by ``+=``); a request's bytes
    leave the buffer only once its body is complete.
    """

    def __init__(self, max_body: int):
        self.buffer = bytearray()
        self.max_body = max_body
        self._body_start = 0
        self._chunks: _ChunkState | None = None

    def read_head(self) -> Head | None:
        """The next request's head, or None if it has not fully arrived."""
        buf = self.buffer
        first = buf.find(b"\n")
        if first < 0 or first >= MAX_LINE:
            if first >= MAX_LINE or len(buf) > MAX_LINE:
                raise BadRequest(414)
            return None
        end = _HEAD_END.search(buf, first)
        if end is None:
            self._check_partial_head(first)
            return None
        text = buf[: end.start()].decode("latin-1")
        request_line, *lines = text.split("\n")
        method, target, version = parse_request_line(request_line)
        if len(text) >= MAX_LINE and any(len(line) >= MAX_LINE for line in lines):
            raise BadRequest(431, "Line too long", method)
        headers = parse_fields([line[:-1] if line.endswith("\r") else line for line in lines], method)
        self._body_start = end.end()
        return make_head(method, target, version, headers)

    def _check_partial_head(self, first: int) -> None:
        """Limits on a header block still arriving."""
        buf = self.buffer
        if buf.count(b"\n", first + 1) >= MAX_HEADERS:
            raise BadRequest(431, "Too many headers")
        if len(buf) - buf.rfind(b"\n") > MAX_LINE:
            raise BadRequest(431, "Line too long")

    def read_body(self, head: Head) -> bytes | None:
        """The body of ``head`` (Content-Length or chunked), or None if it has not fully arrived;
        the request then leaves the buffer."""
        headers = head.headers
        if "chunked" in (headers.get("transfer-encoding") or "").lower():
            return self._read_chunked()
        length_text = headers.get("content-length")
        length = 0 if length_text is None else self._length(length_text)
        start = self._body_start
        end = start + length
        if len(self.buffer) < end:
            return None
        body = bytes(self.buffer[start:end])
        del self.buffer[:end]
        return body

    def _length(self, text: str) -> int:
        """A Content-Length value; BodyError for a bad or too large one."""
        try:
            length = int(text)
            if length < 0:
                raise ValueError(text)
        except ValueError:
            raise BodyError(400, f"Invalid Content-Length '{text}'") from None
        if length > self.max_body:
            raise BodyError(413, f"Request body too large (limit {self.max_body} bytes)")
        return length

    def _read_chunked(self) -> bytes | None:
        """Decode a chunked body as far as it has arrived; the decoder keeps its place."""
        if self._chunks is None:
            self._chunks = _ChunkState(self._body_start)
        state = self._chunks
        body = state.advance(self.buffer, self.max_body)
        if body is not None:
            del self.buffer[: state.pos]
            self._chunks = None
        return body


class _ChunkState:
    """Where a chunked body's decoding stands: position in the buffer, chunks so far."""

    def __init__(self, pos: int):
        self.pos = pos
        self.parts: list[bytes] = []
        self.total = 0
        self.trailer = False

    def advance(self, buf: bytearray, max_body: int) -> bytes | None:
        """Decode what has arrived; the whole body once the last chunk and trailer are in."""
        while True:
            nl = buf.find(b"\n", self.pos)
            if nl < 0:
                if len(buf) - self.pos > MAX_CHUNK_LINE:
                    raise BodyError(400, "Malformed chunked request body")
                return None
            if self.trailer:
                line, self.pos = bytes(buf[self.pos : nl]), nl + 1
                if line in (b"", b"\r"):
                    return b"".join(self.parts)
                continue
            if not self._chunk(buf, nl, max_body):
                return None

    def _chunk(self, buf: bytearray, nl: int, max_body: int) -> bool:
        """Take the chunk whose size line ends at ``nl``; False if its data has not all arrived."""
        size_text = bytes(buf[self.pos : nl]).split(b";", 1)[0].strip()
        if nl - self.pos > MAX_CHUNK_LINE or not _HEX.fullmatch(size_text):
            raise BodyError(400, "Malformed chunked request body")
        size = int(size_text, 16)
        if size == 0:
            self.trailer, self.pos = True, nl + 1
            return True
        if self.total + size > max_body:
            raise BodyError(413, f"Request body too large (limit {max_body} bytes)")
        start, end = nl + 1, nl + 1 + size
        tail = bytes(buf[end : end + 2])
        if tail == b"\r\n" or tail[:1] == b"\n":
            self.parts.append(bytes(buf[start:end]))
            self.total += size
            self.pos = end + (2 if tail == b"\r\n" else 1)
            return True
        if len(buf) < end + 2 and tail in (b"", b"\r"):
            return False
        raise BodyError(400, "Malformed chunked request body")
