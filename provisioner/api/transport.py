"""HTTP transport: ``requests``, configured the supported way, plus a deadline and a size limit per answer
(docs/reliability.md). The client owns the policy (retries, the rate budget); this module owns the wire and
alone imports requests: one session per target, the environment read once, an answer read in pieces with
the deadline and the stop flag checked between them (an alarm cuts the status line short, see interrupt.py).
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils

from .. import __version__
from ..errors import TransportError, UserError
from ..interrupt import STOP_GRACE, StopFlag
from ..secret import REDACTOR

if TYPE_CHECKING:
    from .client import ClientSettings

CLIENT_CERT_ENV = "CE_CLIENT_CERT"
CLIENT_KEY_ENV = "CE_CLIENT_KEY"
CHUNK = 65536  # the largest piece of an answer read at once (requests' own iter_content default is 1)
_TUNNEL_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")


class Answer(NamedTuple):
    """An HTTP answer, read in full (and decompressed)."""

    status: int
    content: bytes
    headers: Mapping[str, str]
    reason: str


class Transport:
    """Sends one request and reads its whole answer within a deadline, or raises ``TransportError``:
    ``ambiguous`` if the request may have reached the server, ``retryable`` unless retrying cannot help."""

    def __init__(self, base_url: str, settings: ClientSettings, stop: StopFlag):
        parts = urlsplit(base_url)
        self._stop = stop
        self._settings = settings
        self.session = requests.Session()
        self.session.trust_env = False  # read once below, not on every request
        self.session.verify = _ca_bundle() if parts.scheme == "https" else True
        self.session.cert = _client_cert()
        self.session.proxies = _environ_proxies(base_url)
        self.session.headers["Accept"] = self.session.headers["Content-Type"] = "application/json"
        self.session.headers["User-Agent"] = f"provisioner/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(1, settings.parallelism), max_retries=0)
        self.session.mount(f"{parts.scheme}://", adapter)  # every request goes to base_url
        proxy = self.session.proxies.get(parts.scheme)
        self.proxy_display = _without_credentials(proxy) if proxy else ""

    def send(self, method: str, url: str, body: bytes | None, authorization: str, deadline: float) -> Answer:
        """One exchange, its answer read in full, failed once ``deadline`` seconds have passed or past
        ``max_answer_bytes`` (decompressed). In the main thread a signal raises ``Interrupted``."""
        ends = time.monotonic() + deadline
        settings = self._settings
        timeout = (settings.connect_timeout, min(settings.read_timeout, deadline))
        headers = {"Authorization": authorization}
        try:
            with (
                self._stop.waiting(deadline),
                self.session.request(
                    method, url, data=body, headers=headers, timeout=timeout, stream=True, allow_redirects=False
                ) as response,
            ):
                content = self._read(response, ends, deadline, settings.max_answer_bytes)
                return Answer(response.status_code, content, response.headers, response.reason or "")
        except (requests.RequestException, OSError) as exc:
            raise self._failed(exc, ends, deadline) from exc

    def _read(self, response: requests.Response, ends: float, deadline: float, max_bytes: int) -> bytes:
        """The body, decoded, in the pieces it arrives in (at most ``CHUNK`` at once): ``raw.read1``
        returns what one read from the socket brings, so a dripping server is noticed byte by byte."""
        parts: list[bytes] = []
        size = 0
        while True:
            if self._stop.expired():
                raise TransportError("ended by the interrupt", True, retryable=False)
            if time.monotonic() > ends:
                raise self._failed(TimeoutError(), ends, deadline)
            try:
                part = response.raw.read1(CHUNK, decode_content=True)
            except Exception as exc:  # noqa: BLE001 - urllib3's own errors: requests wraps them only in iter_content
                raise self._failed(exc, ends, deadline) from exc
            if not part:
                return b"".join(parts)
            size += len(part)
            if size > max_bytes:
                limit = f"the answer is larger than the limit of {max_bytes} bytes (--max-answer-bytes)"
                raise TransportError(limit, True, retryable=False)
            parts.append(part)

    def _failed(self, exc: BaseException, ends: float, deadline: float) -> TransportError:
        """The error of a failed exchange. Once the request may have been sent, a failure at its deadline is
        the deadline's (the alarm's too); one more than ``STOP_GRACE`` late is not retried (abandoned)."""
        message, ambiguous, retryable = classify(exc, self.proxy_display)
        late = time.monotonic() - ends
        if ambiguous and late >= 0:
            message = f"no complete answer within the request deadline of {deadline:.3g} s"
            retryable = late < STOP_GRACE
        return TransportError(message, ambiguous, retryable=retryable)

    def close(self) -> None:
        self.session.close()


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
    return (cert, key) if cert and key else cert


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
    REDACTOR.add(parts.password)  # never printed (None: nothing to add)
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
        linked = (*getattr(item, "args", ()), getattr(item, "reason", None), item.__cause__, item.__context__)
        todo.extend(x for x in linked if isinstance(x, BaseException))
    return found


_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EHOSTDOWN)
# What an exception in the chain means, first match wins: (types, message, ambiguous, retryable). Anything
# that failed while connecting was not sent; past that, the server may have acted on the request.
_FAILURES: tuple[tuple[tuple[type, ...], str, bool, bool], ...] = (
    ((ssl.SSLCertVerificationError,), "TLS certificate verification failed", False, False),
    ((requests.exceptions.ProxyError,), "could not connect through the proxy {proxy}", False, True),
    ((socket.gaierror,), "DNS lookup failed", False, True),
    ((ConnectionRefusedError,), "connection refused", False, True),
    ((), "could not connect", False, True),  # an OSError whose errno is in _UNREACHABLE
    ((requests.exceptions.ConnectTimeout,), "connect timeout", False, True),
    ((requests.exceptions.SSLError,), "TLS handshake failed", False, True),
    ((requests.exceptions.ReadTimeout, TimeoutError), "read timeout", True, True),
    ((ConnectionResetError,), "connection reset", True, True),
    ((requests.exceptions.ContentDecodingError, zlib.error), "answer could not be decompressed", True, True),
    ((requests.exceptions.ChunkedEncodingError, http.client.IncompleteRead), "answer cut short", True, True),
    (
        (requests.exceptions.ConnectionError, ConnectionError),
        "connection closed by the server without a complete answer",
        True,
        True,
    ),
)


def classify(exc: BaseException, proxy: str) -> tuple[str, bool, bool]:
    """(message, ambiguous, retryable) of a failed exchange; never the exception's text (kept as the cause)."""
    chain = _chain(exc)
    tunnel = next((m for e in chain if (m := _TUNNEL_STATUS.search(str(e)))), None)
    if tunnel is not None and tunnel.group(1) == "407":
        return f"the proxy {proxy} refused the request: 407 Proxy Authentication Required", False, False
    for types, message, ambiguous, retryable in _FAILURES:
        if any(isinstance(e, types) if types else isinstance(e, OSError) and e.errno in _UNREACHABLE for e in chain):
            return message.format(proxy=proxy), ambiguous, retryable
    return f"connection error ({type(exc).__name__})", True, True
