"""A small real HTTP server on 127.0.0.1 that answers from a per-test script.

Client tests need real sockets: timeouts, connection resets, keep-alive and the exact number of
requests that reached the server cannot be faked convincingly with a mocked session. Each test
gives the server a script, a list of steps consumed one per request, in arrival order:

* ``Reply(status, headers, body)``: answer; a dict or list body is sent as JSON, str as text.
* ``RESET``: read the request, then abort the connection with a TCP RST (no answer).
* ``CLOSE``: read the request, then close the connection cleanly without answering.
* ``Hang(seconds)``: read the request, wait, then close without answering.
* ``Drip(interval, head, body)``: answer one byte every ``interval`` seconds, announcing a long
  body (or sending ``body``, complete): a server that never goes quiet for a read timeout. With
  ``head``, the status line and headers drip too, and without a ``body`` they never end.
* a callable ``step(received) -> step``: decide from the request (e.g. paging by token).

When the script runs out the ``default`` step answers. Every request is recorded as a
``Received`` (method, path, query, headers, body, arrival time, raw request target), in
``server.requests``. ``ScriptedServer(tls=context)`` serves HTTPS (test certificates in ``tls/``).
``TunnelProxy`` is a CONNECT proxy for testing HTTPS through a proxy (optionally itself served
over TLS, or answering 407 to every CONNECT).
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union
from urllib.parse import parse_qs, urlsplit

BASE_PATH = "/elements/api-v2"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Hang:
    """Read the request, wait ``seconds`` (cut short when the server closes), close, no answer."""

    seconds: float


@dataclass(frozen=True)
class Drip:
    """Answer one byte every ``interval`` seconds until the server closes (the status line and
    headers too when ``head`` is true: then, without a ``body``, a header line that never ends)."""

    interval: float = 0.5
    head: bool = False
    body: bytes | None = None  # a complete body to drip (default: one that never ends)


@dataclass(frozen=True)
class _Action:
    name: str


EXHAUSTED = Reply(500, body={"message": "script exhausted"})
RESET = _Action("reset")
CLOSE = _Action("close")

Step = Union[Reply, Hang, Drip, _Action, Callable[["Received"], Any]]  # noqa: UP007 - runtime alias, 3.10


@dataclass
class Received:
    """One request as the server saw it; ``path`` is relative to ``BASE_PATH`` when under it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    time: float  # time.monotonic() at arrival
    target: str = ""  # the request target as sent (an absolute URI through a forward proxy)

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer:
    """Start with ``with ScriptedServer([...]) as server:``; ``server.base_url`` is the API root."""

    def __init__(self, script: list[Step] = (), default: Step = EXHAUSTED, tls: ssl.SSLContext | None = None):
        self._lock = threading.Lock()
        self._script: deque[Step] = deque(script)
        self._default = default
        self._received: list[Received] = []
        self._connections: set[socket.socket] = set()
        self.closing = threading.Event()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self.scheme = "https" if tls else "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{BASE_PATH}"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def add(self, *steps: Step) -> None:
        """Append steps to the script."""
        with self._lock:
            self._script.extend(steps)

    def close(self) -> None:
        """Stop serving, abort open connections and join every thread."""
        self.closing.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- used by the handler ---------------------------------------------------------------

    def _next_step(self, received: Received) -> Step:
        with self._lock:
            self._received.append(received)
            step = self._script.popleft() if self._script else self._default
        while callable(step) and not isinstance(step, (Reply, Hang, Drip, _Action)):
            step = step(received)
        return step

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close()
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type, owner: ScriptedServer):
        self.owner = owner
        super().__init__(address, handler)

    def process_request(self, request, client_address):  # noqa: D102 - socketserver hook
        self.owner._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # noqa: D102 - socketserver hook
        self.owner._track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # noqa: D102 - a client going away is normal here
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        path = url.path[len(BASE_PATH) :] if url.path.startswith(BASE_PATH) else url.path
        received = Received(
            self.command,
            path,
            parse_qs(url.query, keep_blank_values=True),
            {k.lower(): v for k, v in self.headers.items()},
            body,
            time.monotonic(),
            self.path,
        )
        step = self.server.owner._next_step(received)
        if isinstance(step, Reply):
            self._reply(step)
        elif step is RESET:
            self._reset()
        elif isinstance(step, Hang):
            self.server.owner.closing.wait(step.seconds)
            self.close_connection = True
        elif isinstance(step, Drip):
            self._drip(step)
        else:  # CLOSE
            self.close_connection = True

    def _reply(self, reply: Reply) -> None:
        headers = dict(reply.headers)
        if reply.body is None:
            data = b""
        elif isinstance(reply.body, bytes):
            data = reply.body
        elif isinstance(reply.body, str):
            data = reply.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            data = json.dumps(reply.body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drip(self, step: Drip) -> None:
        body = b"[" + b" " * 100000 if step.body is None else step.body
        length = 100000 if step.body is None else len(body)
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
        if step.head and step.body is None:  # a header line that does not end (hours at any interval)
            head, body = b"HTTP/1.1 200 OK\r\nX-Drip: " + b"." * 60000, b""
        data = (head if step.head else b"") + body
        if not step.head:
            self.wfile.write(head)
            self.wfile.flush()
        self.close_connection = True
        for i in range(len(data)):
            if self.server.owner.closing.wait(step.interval):
                return
            try:
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            except OSError:
                return

    def _reset(self) -> None:
        """Abort the connection: SO_LINGER 0 turns close() into a TCP RST."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()
        self.connection.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TunnelProxy:
    """An HTTP CONNECT proxy on 127.0.0.1: records each CONNECT line and its headers, then pipes
    bytes both ways (TLS stays end to end). ``with TunnelProxy() as proxy: proxy.url``."""

    def __init__(self, tls: ssl.SSLContext | None = None, refuse: bool = False):
        self.connects: list[tuple[str, dict[str, str]]] = []
        self._tls = tls
        self._refuse = refuse
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="tunnel-proxy", daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{'https' if self._tls else 'http'}://{host}:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.05)[0]:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._tunnel, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _tunnel(self, client: socket.socket) -> None:
        if self._tls is not None:
            try:
                client = self._tls.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                client.close()
                return
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, authority, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            self.connects.append((f"{method} {authority}", {k.lower(): v for k, v in headers.items()}))
            if self._refuse:
                client.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
                return
            host, port = authority.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=2)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(client, upstream)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        while not self._stop.is_set():
            pending = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            ready = pending or select.select([a, b], [], [], 0.05)[0]
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)

    def __enter__(self) -> TunnelProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._accepting.join()
        self._listener.close()
        for thread in self._threads:
            thread.join(2)
