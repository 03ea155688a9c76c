"""HTTP transport: ``requests``, configured the supported way, plus a deadline per request.

``client.py`` owns the policy (retries, the rate budget, what a failure means for a create); this
module owns the wire, and is the only one that imports ``requests``:

* one ``Session`` per target, with an ``HTTPAdapter`` whose pool holds ``parallelism`` connections,
  ``max_retries=0`` (retrying is the client's decision), redirects not followed, gzip accepted;
* the environment is read once, when the transport is made, as requests reads it: ``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (``https://`` proxies included), and the CA bundle
  from ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (else certifi's). ``CE_CLIENT_CERT`` and
  ``CE_CLIENT_KEY`` name a client certificate. ~/.netrc is never consulted;
* a deadline: a read timeout bounds each wait for bytes, so a server that sends one byte every half
  second would never time out. A watchdog thread shuts the socket of a request that passes its
  deadline (and of every request still running a second after SIGINT/SIGTERM), which ends the
  request at once. The socket is reached through urllib3's documented extension point, the pool's
  ``ConnectionCls``.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from .. import __version__
from ..errors import UserError
from ..interrupt import StopFlag
from ..secret import REDACTOR
from .wire import Answer, TransportFailure

STOP_GRACE = 1.0  # seconds in-flight requests get to finish after SIGINT/SIGTERM
CLIENT_CERT_ENV = "CE_CLIENT_CERT"
CLIENT_KEY_ENV = "CE_CLIENT_KEY"
_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")


class Transport:
    """Sends one request and reads its whole answer within a deadline."""

    def __init__(self, base_url: str, parallelism: int, stop: StopFlag | None = None):
        parts = urlsplit(base_url)
        self._watchdog = _Watchdog(stop)
        self.session = requests.Session()
        self.session.trust_env = False  # read once below, not on every request
        self._verify = _ca_bundle() if parts.scheme == "https" else True
        self.session.verify = self._verify
        self.session.cert = _client_cert()
        self.session.proxies = _environ_proxies(base_url)
        self.session.headers.update(
            {
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"provisioner/{__version__}",
            }
        )
        adapter = _Adapter(pool_connections=1, pool_maxsize=max(1, parallelism), max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        proxy = self.session.proxies.get(parts.scheme)
        self.proxy_display = _without_credentials(proxy) if proxy else ""
        self._adapter = self.session.get_adapter(base_url)
        self._headers = dict(self.session.headers)  # requests' defaults (gzip, keep-alive) and ours
        self._urls: dict[str, str] = {}  # URL text -> prepared URL, for the few URLs sent again and again

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        authorization: str,
        timeout: tuple[float, float],
        deadline: float,
    ) -> Answer:
        """One exchange, finished or failed within ``deadline`` seconds."""
        request = self._prepare(method, url, body, authorization)
        watch = self._watchdog.begin(time.monotonic() + deadline)
        try:
            response = self._adapter.send(
                request,
                timeout=timeout,
                verify=self._verify,
                cert=self.session.cert,
                proxies=self.session.proxies,
            )
            return Answer(response.status_code, response.content, response.headers, response.reason)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            message, ambiguous, retryable = classify(exc, watch.fired, deadline, self.proxy_display)
            raise TransportFailure(message, ambiguous, retryable) from exc
        finally:
            self._watchdog.end(watch)

    def _prepare(self, method: str, url: str, body: bytes | None, authorization: str) -> requests.PreparedRequest:
        """The request as ``Session.request`` would prepare it with this session's settings, through
        ``PreparedRequest``'s public steps. ``Session.request`` merges the environment, cookies and
        hooks again on every call: about 0.3 ms of CPU a request here, which is what caps a run on
        two cores. The session's adapter then sends it (redirects are never followed)."""
        request = requests.PreparedRequest()
        request.prepare_method(method)
        prepared = self._urls.get(url)
        if prepared is None:
            request.prepare_url(url, None)
            if len(self._urls) < 64:  # page URLs carry tokens and are sent once: not kept
                self._urls[url] = request.url or ""
        else:
            request.url = prepared
        request.prepare_headers({**self._headers, "Authorization": authorization})
        request.prepare_body(body, None)
        return request

    def close(self) -> None:
        self.session.close()
        self._watchdog.close()


# -- the deadline --------------------------------------------------------------------------------


class _Watch:
    __slots__ = ("deadline", "sockets", "fired")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.fired: str | None = None  # "deadline" or "stop" once the watchdog ended the request


_current = threading.local()  # the _Watch of the request this thread is sending


class _Watchdog:
    """One thread per transport that ends requests past their deadline, or after a signal."""

    def __init__(self, stop: StopFlag | None):
        self._stop = stop
        self._stopped_at: float | None = None
        self._cond = threading.Condition(threading.Lock())
        self._active: set[_Watch] = set()
        self._wake = 0.0  # when the watchdog thread next looks (monotonic)
        self._closed = False
        self._thread: threading.Thread | None = None

    def begin(self, deadline: float) -> _Watch:
        watch = _Watch(deadline)
        _current.watch = watch
        with self._cond:
            self._active.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline", daemon=True)
                self._thread.start()
            elif deadline < self._wake:  # the watchdog sleeps past this deadline: wake it now
                self._cond.notify()
        return watch

    def end(self, watch: _Watch) -> None:
        _current.watch = None
        with self._cond:
            self._active.discard(watch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._stop is not None and self._stop.is_set() and self._stopped_at is None:
                    self._stopped_at = now
                cut = self._stopped_at + STOP_GRACE if self._stopped_at is not None else None
                for watch in list(self._active):
                    if now >= watch.deadline or (cut is not None and now >= cut):
                        watch.fired = watch.fired or ("stop" if cut is not None and now >= cut else "deadline")
                        _shut(watch.sockets)
                wake = min((w.deadline for w in self._active if not w.fired), default=now + 3600)
                self._wake = now + min(max(0.0, wake - now), 0.25)
                self._cond.wait(timeout=self._wake - now)


def _shut(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes the thread blocked on it
        except OSError:
            pass


def _register(conn: Any) -> None:
    """Put the connection's socket under the watch of the request this thread is sending."""
    watch = getattr(_current, "watch", None)
    sock = getattr(conn, "sock", None)
    if watch is None or sock is None:
        return
    if sock not in watch.sockets:
        watch.sockets.append(sock)
    if watch.fired:
        _shut([sock])


class _Watched(urllib3.connection.HTTPConnection):
    """A connection that puts its socket under the watch of the request its thread is sending."""

    def connect(self) -> None:
        super().connect()
        _register(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose pools (direct and through a proxy) use the watched connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


# -- the environment, read once ------------------------------------------------------------------


def _ca_bundle() -> str | bool:
    """The CA bundle the environment names (checked now), or True for certifi's."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        return True
    try:
        ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"cannot load the CA bundle {bundle!r}: {getattr(exc, 'strerror', None) or exc}",
            hint="check REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE",
        ) from None
    return bundle


def _client_cert() -> str | tuple[str, str] | None:
    cert = os.environ.get(CLIENT_CERT_ENV) or None
    key = os.environ.get(CLIENT_KEY_ENV) or None
    if key and not cert:
        raise UserError(
            f"{CLIENT_KEY_ENV} is set without {CLIENT_CERT_ENV}",
            hint=f"set {CLIENT_CERT_ENV} to the client certificate (PEM)",
        )
    for name, path in ((CLIENT_CERT_ENV, cert), (CLIENT_KEY_ENV, key)):
        if path and not os.path.isfile(path):
            raise UserError(f"{name} names {path!r}, which is not a readable file", hint=f"check {name}")
    if cert and key:
        return (cert, key)
    return cert


def _environ_proxies(base_url: str) -> dict[str, str]:
    """The proxy for the API from the environment, as requests would choose it (NO_PROXY honoured)."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return {}
    proxies = requests.utils.get_environ_proxies(base_url)
    scheme = urlsplit(base_url).scheme
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return {}
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.password:
        REDACTOR.add(parts.password)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"unsupported proxy for {scheme}:// in the environment ({parts.scheme}://{parts.hostname})",
            hint="use an http:// or https:// proxy URL in HTTPS_PROXY / HTTP_PROXY, or unset it",
        )
    return {scheme: url if "://" in url else f"http://{url}"}


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


# -- what a failure means ------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (args, ``reason``) and its causes."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 30:
        item = todo.pop()
        if any(item is f for f in found):
            continue
        found.append(item)
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        for linked in (getattr(item, "reason", None), item.__cause__, item.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return found


def _has(chain: list[BaseException], *types: type) -> bool:
    return any(isinstance(e, types) for e in chain)


def classify(exc: BaseException, fired: str | None, deadline: float, proxy: str) -> tuple[str, bool, bool]:
    """(message, ambiguous, retryable) for a failed exchange. Messages never quote the exception text
    (it is kept as the chained cause). Anything that failed while connecting was not sent."""
    chain = _chain(exc)
    if fired == "stop":
        return "ended by the interrupt", True, False
    if fired == "deadline":
        return f"no complete answer within the request deadline of {deadline:g} s", True, True
    tunnel = next((m for e in chain if (m := _TUNNEL_STATUS.search(str(e)))), None)
    if tunnel is not None and tunnel.group(1) == "407":
        return f"the proxy {proxy} refused the request: 407 Proxy Authentication Required", False, False
    if _has(chain, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed", False, False
    if _has(chain, requests.exceptions.ProxyError, urllib3.exceptions.ProxyError):
        return f"could not connect through the proxy {proxy}", False, True
    if _has(chain, urllib3.exceptions.NameResolutionError, socket.gaierror):
        return "DNS lookup failed", False, True
    if _has(chain, urllib3.exceptions.NewConnectionError):
        return ("connection refused" if _has(chain, ConnectionRefusedError) else "could not connect"), False, True
    if _has(chain, requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return "connect timeout", False, True
    if _has(chain, requests.exceptions.SSLError):
        return "TLS handshake failed", False, True
    return _after_sending(chain, exc)


def _after_sending(chain: list[BaseException], exc: BaseException) -> tuple[str, bool, bool]:
    """Failures once the request may have been sent: the server may have acted on it."""
    if _has(chain, requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        return "read timeout", True, True
    if _has(chain, ConnectionResetError):
        return "connection reset", True, True
    if _has(chain, requests.exceptions.ContentDecodingError):
        return "answer could not be decompressed", True, True
    if _has(chain, urllib3.exceptions.IncompleteRead, requests.exceptions.ChunkedEncodingError):
        return "answer cut short", True, True
    if _has(chain, urllib3.exceptions.ProtocolError, ConnectionError):
        return "connection closed by the server without a complete answer", True, True
    return f"connection error ({type(exc).__name__})", True, True
