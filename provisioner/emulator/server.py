"""The emulator over HTTP: the standard library's threading HTTP server on loopback.

Every test of the project and every new user's first run talks to this instead of a paid Cloud
Elements account. ``http.server`` does the HTTP/1.1 (keep-alive, a thread per connection); this
module reads request bodies, lets ``Api`` answer, compresses large answers for clients that accept
gzip, logs each request in the store, and misbehaves on request (``faults.py``): latency and slow
answers are a sleep in the connection's thread; 5xx and 429 are answers; "reset" and "lost" end the
connection with a TCP RST instead of an answer, before or after the API processed the request.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import secrets
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .api import BASE_PATH, Api, ApiFailure, RawJson, Response, default_catalog, error_response, organization_key
from .faults import NO_FAULT, FaultConfig, FaultDecider
from .store import Store, StoreClosed

SERVER_NAME = "CloudElementsEmulator/1.0"
MAX_BODY_BYTES = 10 * 1024 * 1024
IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
POLL_S = 0.05  # how soon a request waiting out its latency, and the accept loop, notice stop()
GZIP_MIN_BYTES = 1024  # bodies larger than this are compressed for a client that accepts gzip
GZIP_LEVEL = 1  # zlib's fastest: ~0.8 ms for a 200-instance page (~380 KB), which shrinks ~30 times
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0}: close() sends a TCP RST
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def accepts_gzip(value: str | None) -> bool:
    """True if an Accept-Encoding value accepts gzip: ``gzip`` (or ``x-gzip``) with a q-value above 0,
    or ``*`` above 0 when gzip is not named (RFC 9110, 12.5.3)."""
    weights: dict[str, float] = {}
    for item in (value or "").lower().split(","):
        coding, *params = (piece.strip() for piece in item.split(";"))
        weight = 1.0
        for name, _, number in (param.partition("=") for param in params):
            if name.strip() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        weights.setdefault("gzip" if coding == "x-gzip" else coding, weight)
    return weights["gzip"] > 0 if "gzip" in weights else weights.get("*", 0.0) > 0


class Handler(BaseHTTPRequestHandler):
    """One client connection, in its own thread: every request goes through ``serve``."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are two writes: send each at once
    server: _Server

    def version_string(self) -> str:
        return SERVER_NAME

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator logs each request itself (``Emulator.log_line``)."""

    def serve(self) -> None:
        """Read the body, apply faults, let the Api answer, log the request and answer (or drop)."""
        emulator = self.server.emulator
        started, request_id = time.monotonic(), secrets.token_hex(12)  # 24 hex digits, as the platform's
        path, _, query = self.path.partition("?")
        try:
            try:
                body = self._body()
            except ApiFailure as exc:  # answered and logged, then the connection closes
                self.close_connection = True
                with emulator.store.lock:
                    log_id = self._log(started, path, query, exc.status, None)
                self._send(error_response(exc.status, exc.message, request_id), request_id, log_id)
                return
            self._answer(started, path, query, body, request_id)
        except (StoreClosed, OSError):  # the emulator stops, or the client is gone
            self._drop()
        except Exception as exc:  # a bug: one line in the log, a 500, no traceback
            emulator.log_line(f"emulator internal error: {type(exc).__name__}: {exc}")
            self.close_connection = True
            self._write(error_response(500, "Internal emulator error", request_id), request_id)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = serve

    def _answer(self, started: float, path: str, query: str, body: bytes, request_id: str) -> None:
        """Decide the request's fault, wait out its delay, then answer (or drop the connection); the
        API's work and the log row are committed before the client can see the answer."""
        emulator = self.server.emulator
        decider: FaultDecider | None = None
        decision = NO_FAULT
        if path == BASE_PATH or path.startswith(BASE_PATH + "/"):  # faults on the API's paths only
            decider = emulator.decider  # one snapshot: faults may be reassigned meanwhile
            with emulator.store.lock:
                decision = decider.decide(self.command)
            delay = decision.delay_s + (decider.config.slow_ms / 1000.0 if decision.fault == "slow" else 0.0)
            if delay > 0 and not emulator.wait(delay):
                self._drop()  # stopped meanwhile: the request is dropped unprocessed
                return
        with emulator.store.lock:  # one request at a time through the rate limit, the Api and the log
            if decider is not None:
                decision = decider.rate_limited(decision, organization_key(self.headers.get("Authorization")))
            response = None
            if decision.status is not None:  # an injected error or 429
                retry = {"Retry-After": decision.retry_after} if decision.retry_after else None
                response = error_response(decision.status, decision.message, request_id, retry)
            elif decision.fault != "reset":  # "reset": not processed at all; "lost": processed, not sent
                response = emulator.api.handle(self.command, path, query, self.headers, body, request_id)
            if decision.fault == "lost":
                response = None
            log_id = self._log(started, path, query, 0 if response is None else response.status, decision.fault)
        if response is None:
            self._drop()
        else:
            self._send(response, request_id, log_id)

    def _body(self) -> bytes:
        """The request body, framed by Content-Length; ApiFailure when it cannot be read. A chunked
        body is refused (411): ``http.server`` does not decode one, and no client of the API sends one."""
        text = self.headers.get("Content-Length")
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ApiFailure(411, "Length Required: send the request body with a Content-Length, not chunked")
        try:
            length = 0 if text is None else int(text)
            if length < 0:
                raise ValueError(text)
        except ValueError:
            raise ApiFailure(400, f"Invalid Content-Length '{text}'") from None
        if length > MAX_BODY_BYTES:
            raise ApiFailure(413, f"Request body too large (limit {MAX_BODY_BYTES} bytes)")
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionAbortedError("the client closed the connection inside the body")
        return body

    def _log(self, started: float, path: str, query: str, status: int, fault: str | None) -> int:
        """Write the request log row and the log line."""
        duration = (time.monotonic() - started) * 1000.0
        emulator = self.server.emulator
        log_id = emulator.store.record_request(self.command, path, query, status, fault, duration)
        target, suffix = f"{path}?{query}" if query else path, f" [{fault}]" if fault else ""
        emulator.log_line(f"{self.command} {target} -> {status} ({duration:.0f} ms){suffix}")
        return log_id

    def _send(self, response: Response, request_id: str, log_id: int) -> None:
        """Answer a logged request; one the client can no longer receive is logged as status 0."""
        try:
            self._write(response, request_id)
        except OSError:
            self.close_connection = True
            self.server.emulator.store.set_request_status(log_id, 0)

    def _write(self, response: Response, request_id: str) -> None:
        """Status, headers and body. A body over GZIP_MIN_BYTES goes gzip-compressed to a client that
        accepts it, as a web server in front of the API would send it (a HEAD answer gets the same
        headers, Content-Length included)."""
        if isinstance(response.body, RawJson):
            body = bytes(response.body)
        else:
            body = b"" if response.body is None else _ENCODER.encode(response.body).encode()
        self.send_response(response.status)
        self.send_header("elements-request-id", request_id)
        if body:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        if len(body) > GZIP_MIN_BYTES:
            self.send_header("Vary", "Accept-Encoding")
            if accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
                self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        """End the connection without an answer: SO_LINGER {on, 0} makes its close() a TCP RST (the
        socket really closes once the server's finish() closes its files)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        self.connection.close()


class _Server(ThreadingHTTPServer):
    """The listening socket and its connection threads (daemons: stop() does not wait for them)."""

    request_queue_size = 128

    def __init__(self, emulator: Emulator, address: tuple[str, int], family: int):
        self.emulator = emulator
        self.address_family = family
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request: quiet for a socket error (the client went
        away), one log line for anything else; never a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.emulator.log_line(f"emulator internal error: {type(exc).__name__}: {exc}")


def _loopback_bind_address(host: str) -> tuple[str, int]:
    """(address to bind, address family) for a loopback host; ValueError for anything else."""
    if host == "localhost":
        return "127.0.0.1", socket.AF_INET
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(f"the emulator only listens on loopback (127.0.0.0/8, ::1 or localhost), not {host!r}")
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


class Emulator:
    """The emulator: an HTTP server on loopback with SQLite state and optional faults. The store's
    lock is its one lock: it also guards the fault draws, the rate limit and the log stream."""

    def __init__(
        self,
        db_path: str | Path,
        user_secret: str,
        organization_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultConfig | None = None,
        log_stream: Any = None,
    ):
        self._bind_host, self._family = _loopback_bind_address(host)
        if not user_secret or not organization_secret:
            raise ValueError("the emulator needs a non-empty user secret and organization secret")
        self.db_path, self.host, self.port, self.log_stream = db_path, host, port, log_stream
        self.faults = faults or FaultConfig()
        self.catalog = default_catalog()
        self.store = Store(db_path, secret_keys=self.catalog.secret_keys)
        self.api = Api(self.catalog, self.store, user_secret, organization_secret)
        self.stopped = False
        self._server: _Server | None = None

    @property
    def faults(self) -> FaultConfig:
        """The fault configuration; assigning one takes effect for the next request and restarts
        the seeded random stream."""
        return self.decider.config

    @faults.setter
    def faults(self, value: FaultConfig) -> None:
        if not isinstance(value, FaultConfig):
            raise TypeError("faults must be a FaultConfig")
        self.decider = FaultDecider(value)

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:PORT/elements/api-v2 (after start())."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self._bind_host}]" if self._family == socket.AF_INET6 else self._bind_host
        return f"http://{host}:{self.port}{BASE_PATH}"

    def start(self) -> str:
        """Listen, serve in a daemon thread, and return the base URL."""
        if self.stopped or self._server is not None:
            raise RuntimeError("the emulator was started before; create a new one")
        try:
            self._server = _Server(self, (self._bind_host, self.port), self._family)
        except BaseException:
            self.stop()
            raise
        self.port = self._server.server_address[1]
        name = f"emulator:{self.port}"
        threading.Thread(target=self._server.serve_forever, args=(POLL_S,), name=name, daemon=True).start()
        return self.url

    def stop(self) -> None:
        """Stop listening and close the database; requests still waiting out a delay, and those that
        arrive on connections still open, are dropped unprocessed. Idempotent."""
        with self.store.lock:
            if self.stopped:
                return
            self.stopped = True
        if self._server is not None:
            self._server.shutdown()  # returns once the accept loop has (within POLL_S)
            self._server.server_close()
        self.store.close()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` in the calling connection thread; False if stop() came meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stopped and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, POLL_S))
        return not self.stopped

    def __enter__(self) -> Emulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_line(self, line: str) -> None:
        """Write one line to the log stream, if any (never headers or bodies)."""
        if self.log_stream is None:
            return
        with self.store.lock:
            try:
                self.log_stream.write(line + "\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass
