"""The one module that talks HTTP to the Cloud Elements platform API.

Everything the network can do wrong is decided here, once: timeouts on every request, which
failures are retried and how long to back off, the rate budget shared by all worker threads, how
an HTTP status maps onto the error tree of ``errors.py``, and the request statistics. The rest of
provisioner calls typed methods (``list_instances``, ``create_instance``, ...) and sees either
parsed JSON or a ``ProvisionerError``.

Two rules come first:

* Secrets never leave except on the wire. The Authorization header is built from ``Secret.reveal()``
  for each request, request bodies reveal ``Secret`` values only when serialised, and every
  trace line and error message goes through ``REDACTOR.redact``; none of them ever contains headers
  or bodies.
* A create is never repeated blindly. ``POST /instances`` is retried only when the request certainly
  did not reach the server (or it got 429); a 5xx or a lost response raises ``AmbiguousCreate`` so
  the caller looks the instance up before creating it again.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import os
import queue
import random
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from . import __version__
from .errors import (
    AmbiguousCreate,
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    UserError,
)
from .interrupt import StopFlag
from .ratelimit import RateBudget
from .secret import MASK, REDACTOR, Secret, json_default
from .stats import RequestStats

MAX_MESSAGE = 300
NEXT_PAGE_HEADER = "elements-next-page-token"
REQUEST_ID_HEADER = "elements-request-id"
_EMPTY_LIST = re.compile(r"^No .* found")
_STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict, 429: RateLimited,
}


@dataclass(frozen=True)
class ClientSettings:
    """Network behaviour of one run; see the project documentation for each knob."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 10          # per request, first try included
    max_retry_time: float = 120.0   # total wall time per request across its retries
    backoff_base: float = 0.2       # full jitter: uniform(0, min(cap, base * 2**retry)), >= Retry-After
    backoff_cap: float = 10.0
    parallelism: int = 8            # idle keep-alive connections kept (one per worker thread)
    page_size: int = 200
    max_rate: float | None = None   # requests/second ceiling; None = none until the API throttles


@dataclass
class _Reply:
    """A successful (2xx) answer, already read and parsed."""

    status: int
    headers: Any
    data: Any


class _TransportFailure(TransportError):
    """A TransportError that also knows whether trying again can help (not for a bad certificate)."""

    def __init__(self, message: str, ambiguous: bool, method: str, path: str, retryable: bool = True):
        super().__init__(message, ambiguous, method, path)
        self.retryable = retryable


class _ElementsAuth:
    """Builds ``Authorization: User <u>, Organization <o>``; the secrets are revealed only here,
    for the header of each request."""

    def __init__(self, user_secret: Secret, organization_secret: Secret):
        self._user = user_secret
        self._organization = organization_secret

    def header(self) -> str:
        return f"User {self._user.reveal()}, Organization {self._organization.reveal()}"

    def __repr__(self) -> str:
        return f"_ElementsAuth({MASK})"


class ReadOnlyClient:
    """Typed read calls to the platform API (listings, one instance, element definitions) with
    retries, backoff, a shared rate budget and statistics. It cannot write: ``drift`` and other
    read-only commands are built on this class alone, and ``_call`` refuses any method but GET."""

    _WRITES_ALLOWED = False

    def __init__(self, base_url: str, user_secret: Secret, organization_secret: Secret,
                 settings: ClientSettings, *, budget: RateBudget | None = None,
                 stats: RequestStats | None = None, trace: Callable[[str], None] | None = None,
                 stop: StopFlag | None = None):
        self._base = _check_base_url(base_url)
        self.settings = settings
        self.budget = budget if budget is not None else RateBudget(settings.max_rate)
        self.stats = stats if stats is not None else RequestStats()
        self._trace = trace
        self._stop = stop
        auth = _ElementsAuth(Secret(user_secret), Secret(organization_secret))
        self._transport = _Transport(settings, auth, self._base)

    # -- context management -----------------------------------------------------------------

    def close(self) -> None:
        """Close the keep-alive connections. Safe to call twice."""
        self._transport.close()

    def __enter__(self) -> ReadOnlyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- API calls --------------------------------------------------------------------------

    def list_instances(self, tags: Sequence[str] = ()) -> list[dict]:
        """Every instance (all pages), optionally only those carrying every tag in ``tags``."""
        return [item for page in self.instance_pages(tags) for item in page]

    def instance_pages(self, tags: Sequence[str] = ()) -> Iterator[list]:
        """The same listing, one page at a time, as it arrives: the caller's work on one page
        overlaps the round trip of the next."""
        for page in self._pages("/instances", [("tags[]", t) for t in tags]):
            yield _remember_tokens(page)

    def get_instance(self, instance_id: int | str) -> dict:
        """``GET /instances/{id}``; NotFound if there is no such instance."""
        return _remember_tokens(self._call("GET", f"/instances/{_segment(instance_id)}").data)

    def get_element(self, key: str) -> dict:
        """``GET /elements/{key}``: the element's metadata."""
        return self._call("GET", f"/elements/{_segment(key)}").data

    def element_keys(self) -> Any:
        """``GET /elements/keys``: the keys of every element the catalog offers."""
        return self._call("GET", "/elements/keys").data

    def element_configuration(self, key: str) -> Any:
        """``GET /elements/{key}/configuration``: the element's configuration definitions."""
        return self._call("GET", f"/elements/{_segment(key)}/configuration").data

    # -- paging -----------------------------------------------------------------------------

    def _pages(self, path: str, params: list[tuple[str, str]]) -> Iterator[list]:
        """Yield each page of a list endpoint, following ``elements-next-page-token``.

        A fetcher thread walks the pages on its own, requesting the next one as soon as the token
        (a header) of the last one is read, and hands the raw bodies over; the caller parses one page
        while the next is on the wire. (Parsing holds the interpreter lock for milliseconds: if the
        caller had to hand each token back, every page would wait for the previous parse.)"""
        replies: queue.SimpleQueue = queue.SimpleQueue()
        abandoned = threading.Event()
        fetcher = threading.Thread(target=self._fetch_pages, args=(path, params, replies, abandoned),
                                   name="pages", daemon=True)
        fetcher.start()
        try:
            while True:
                reply = replies.get()
                if reply is None:
                    return
                if isinstance(reply, BaseException):
                    raise reply
                yield _page_items(reply, path)
        finally:
            abandoned.set()
            fetcher.join()

    def _fetch_pages(self, path: str, params: list[tuple[str, str]], replies: queue.SimpleQueue,
                     abandoned: threading.Event) -> None:
        """The fetcher thread: every raw page in order, then None; or the error that stopped it."""
        seen: set[str] = set()
        token: str | None = None
        try:
            while not abandoned.is_set():
                reply = self._page(path, params, token)
                if reply is None:
                    break
                token = (reply.headers.get(NEXT_PAGE_HEADER) or "").strip()
                if token in seen:
                    raise ApiError(reply.status, f"the API repeated a page token after {len(seen) + 1} "
                                   "pages; stopped to avoid an endless loop", method="GET", path=path)
                seen.add(token)
                replies.put(reply)
                if not token:
                    break
            replies.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and raised there
            replies.put(exc)

    def _page(self, path: str, params: list[tuple[str, str]], token: str | None) -> _Reply | None:
        """One raw page, or None for the API's 404 "No ... found" (an empty collection)."""
        query = [("pageSize", str(self.settings.page_size)), *params]
        if token:
            query.append(("nextPage", token))
        try:
            return self._call("GET", path, params=query, raw=True)
        except NotFound as exc:
            if _EMPTY_LIST.match(getattr(exc, "raw_message", "") or ""):
                return None
            raise

    # -- one call, with retries -------------------------------------------------------------

    def _call(self, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
              body: Any = None, create: bool = False, raw: bool = False) -> _Reply:
        """Send one API call, retrying as the method allows; return the 2xx reply or raise."""
        if method != "GET" and not self._WRITES_ALLOWED:
            raise RuntimeError(f"a read-only client cannot send {method}")
        data = None if body is None else json.dumps(body, default=json_default).encode("utf-8")
        shown = _display(path, params)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self._before_attempt()
            outcome, elapsed_ms = self._attempt(method, path, params, data, shown, raw)
            self.stats.record(method, getattr(outcome, "status", None), retry=attempt > 1)
            line = f"HTTP {method} {shown} -> {_outcome_text(outcome)} ({elapsed_ms} ms)"
            if isinstance(outcome, _Reply):
                self._emit(line)
                return outcome
            if create and _ambiguous(outcome):
                self._emit(f"{line}; outcome unknown, not retried")
                raise AmbiguousCreate(outcome) from outcome
            delay, why = self._retry_delay(outcome, attempt, started)
            if delay is None:
                self._emit(f"{line}{why}")
                raise outcome from outcome.__cause__
            self._emit(f"{line}; retrying in {delay:.2f} s "
                       f"(attempt {attempt + 1}/{self.settings.max_attempts})")
            self._pause(delay)

    def _before_attempt(self) -> None:
        """Stop if interrupted, then wait for the shared rate budget (a signal cuts the wait)."""
        if self._stop is not None:
            self._stop.check()
            self.budget.acquire(wait=self._stop.wait)
            self._stop.check()
        else:
            self.budget.acquire()

    def _pause(self, seconds: float) -> None:
        """Back off between attempts; a signal ends the pause and raises Interrupted."""
        if self._stop is None:
            time.sleep(seconds)
        elif self._stop.wait(seconds):
            self._stop.check()

    def _attempt(self, method: str, path: str, params: list[tuple[str, str]] | None, data: bytes | None,
                 shown: str, raw: bool = False) -> tuple[_Reply | ApiError | TransportError, int]:
        """One HTTP exchange. Returns the reply or the error it maps to (not raised yet)."""
        t0 = time.monotonic()
        target = path + (f"?{urlencode(params)}" if params else "")
        try:
            response = self._transport.send(method, target, data)
        except (http.client.HTTPException, OSError) as exc:
            failure = _transport_failure(exc, method, shown)
            failure.__cause__ = exc
            return failure, _ms_since(t0)
        return self._read_response(response, method, shown, raw), _ms_since(t0)

    def _read_response(self, response: _Answer, method: str, shown: str,
                       raw: bool = False) -> _Reply | ApiError:
        """Map an HTTP answer onto a _Reply or an ApiError; feed the rate budget."""
        status = response.status_code
        if 200 <= status < 300:
            self.budget.on_success()
            if raw:  # the caller parses (list pages: parsed while the next page is fetched)
                return _Reply(status, response.headers, response.content)
            try:
                data = json.loads(response.content) if response.content.strip() else None
            except ValueError:
                return ApiError(status, "the API answered with something that is not JSON: "
                                + _text_start(response.content), _header_request_id(response), method, shown)
            return _Reply(status, response.headers, data)
        error = _api_error(response, method, shown)
        if status == 429:
            self.budget.on_throttle(error.retry_after)
        return error

    def _retry_delay(self, error: Exception, attempt: int, started: float) -> tuple[float | None, str]:
        """Seconds to wait before the next attempt, or (None, reason) to give up with ``error``."""
        if not _retryable(error):
            return None, ""
        settings = self.settings
        if attempt >= settings.max_attempts:
            return None, f"; giving up after {attempt} attempts"
        ceiling = min(settings.backoff_cap, settings.backoff_base * 2.0 ** min(attempt - 1, 60))
        delay = max(random.uniform(0.0, ceiling), getattr(error, "retry_after", None) or 0.0)
        if time.monotonic() - started + delay > settings.max_retry_time:
            return None, f"; giving up, retry time budget of {settings.max_retry_time:g} s exhausted"
        return delay, ""

    def _emit(self, line: str) -> None:
        if self._trace is not None:
            self._trace(REDACTOR.redact(line))


class Client(ReadOnlyClient):
    """The read calls plus the writes: create, update, patch and delete instances."""

    _WRITES_ALLOWED = True

    def create_instance(self, body: dict) -> dict:
        """``POST /instances``. Raises AmbiguousCreate when the outcome cannot be known."""
        return _remember_tokens(self._call("POST", "/instances", body=body, create=True).data)

    def update_instance(self, instance_id: int | str, body: dict) -> dict:
        """``PUT /instances/{id}`` with a full body."""
        return _remember_tokens(self._call("PUT", f"/instances/{_segment(instance_id)}", body=body).data)

    def patch_instance(self, instance_id: int | str, body: dict) -> dict:
        """``PATCH /instances/{id}`` with a partial body."""
        return _remember_tokens(self._call("PATCH", f"/instances/{_segment(instance_id)}", body=body).data)

    def delete_instance(self, instance_id: int | str) -> bool:
        """``DELETE /instances/{id}``: True if deleted now, False if it was already gone (404)."""
        try:
            self._call("DELETE", f"/instances/{_segment(instance_id)}")
        except NotFound:
            return False
        return True



# -- helpers: session and URLs ------------------------------------------------------------------

def _check_base_url(base_url: str) -> str:
    """The base URL without its trailing slash; UserError if it is not an http(s) URL."""
    url = (base_url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"the API base URL must be an http:// or https:// URL, got {REDACTOR.redact(url)!r}",
                        hint="e.g. https://api.cloud-elements.com/elements/api-v2")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError("the API base URL must not contain credentials, a query or a fragment")
    return url


class _Answer:
    """The parts of an HTTP answer the client reads (the body is read in full)."""

    __slots__ = ("status_code", "content", "headers", "reason")

    def __init__(self, status: int, content: bytes, headers: http.client.HTTPMessage, reason: str):
        self.status_code = status
        self.content = content
        self.headers = headers
        self.reason = reason or ""


class _ConnectError(OSError):
    """Opening a connection failed, so the request was certainly not sent (the cause is chained)."""


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    headers: dict[str, str]  # Proxy-Authorization when the proxy URL carries credentials


class _OneWrite:
    """Send the request head and a bytes body in one write. http.client writes them separately: two
    system calls, two TCP segments with TCP_NODELAY, and a server woken twice per request."""

    _buffer: list[bytes]

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if not isinstance(message_body, bytes) or encode_chunked:
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            return
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(head + message_body)  # type: ignore[attr-defined]


class _HTTPConnection(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneWrite, http.client.HTTPSConnection):
    pass


class _Transport:
    """Sends one request over a keep-alive connection with the standard library's ``http.client``.

    Idle connections wait in a LIFO pool (at most ``parallelism`` kept); one that the server closed
    while idle is noticed before reuse (a zero-timeout poll) and replaced, so a create is never sent
    on a dead connection. Connect timeout while connecting, read timeout afterwards; redirects are
    not followed; TLS is verified against the CA bundle (``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE``, else certifi's). ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``
    are read once, as curl and requests read them: HTTPS goes through a CONNECT tunnel, plain HTTP
    to an absolute URI. ~/.netrc is never consulted. This layer costs about half the CPU per
    request of urllib3's pool manager, which matters at 1,000 creates on two cores."""

    def __init__(self, settings: ClientSettings, auth: _ElementsAuth, base_url: str):
        parts = urlsplit(base_url)
        self._auth = auth
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._connect_timeout = settings.connect_timeout
        self._read_timeout = settings.read_timeout
        self._keep = max(1, settings.parallelism)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context = _tls_context() if self._https else None
        self._proxy = _environ_proxy(parts.scheme, self._host)
        forward = self._proxy is not None and not self._https  # plain HTTP through a proxy
        self._prefix = (f"{parts.scheme}://{parts.netloc}" if forward else "") + parts.path
        self._headers = {"Accept": "application/json", "Content-Type": "application/json",
                         "User-Agent": f"provisioner/{__version__}",
                         **(self._proxy.headers if forward and self._proxy else {})}

    def send(self, method: str, target: str, body: bytes | None) -> _Answer:
        """One exchange; ``target`` is the path and query below the base URL."""
        conn = self._checkout()
        headers = {**self._headers, "Authorization": self._auth.header()}
        try:
            conn.request(method, self._prefix + target, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                keep = len(self._idle) < self._keep
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()
        return _Answer(response.status, content, response.headers, response.reason)

    def _checkout(self) -> http.client.HTTPConnection:
        """The most recently used idle connection that is still open, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if conn.sock is not None and not _readable(conn.sock):
                return conn
            conn.close()  # closed by the server while idle (or it sent something unasked)

    def _connect(self) -> http.client.HTTPConnection:
        host, port = (self._proxy.host, self._proxy.port) if self._proxy else (self._host, self._port)
        conn: http.client.HTTPConnection
        if self._https:
            conn = _HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._context)
            if self._proxy is not None:
                conn.set_tunnel(self._host, self._port, headers=self._proxy.headers)
        else:
            conn = _HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
            conn.sock.settimeout(self._read_timeout)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _ConnectError(f"could not connect to {host}:{port}") from exc
        return conn

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _readable(sock: socket.socket) -> bool:
    """Has an idle connection something to read? Then it is closed (EOF) or out of step."""
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _tls_context() -> ssl.SSLContext:
    """Certificate and host-name verification against the CA bundle the environment names, or
    certifi's."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        import certifi  # only for https: it costs start-up time

        bundle = certifi.where()
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot load the CA bundle {bundle!r}: {exc.strerror or exc}",
                        hint="check REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE") from None


def _environ_proxy(scheme: str, host: str) -> _Proxy | None:
    """The proxy for the API from the environment, or None (NO_PROXY honoured)."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    import urllib.request  # only when a proxy variable is set: it costs start-up time

    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.password:
        REDACTOR.add(parts.password)
    if parts.scheme != "http" or not parts.hostname:
        raise UserError(f"unsupported proxy for {scheme}:// in the environment ({parts.scheme}://{parts.hostname})",
                        hint="use an http:// proxy URL in HTTPS_PROXY / HTTP_PROXY, or unset it")
    headers = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, headers)


def _segment(value: int | str) -> str:
    """One URL path segment, percent-encoded."""
    text = str(value)
    if not text:
        raise ValueError("an empty id or key cannot be used in a URL path")
    return quote(text, safe="")


def _display(path: str, params: list[tuple[str, str]] | None) -> str:
    """The path as shown in traces and errors: relative to base_url, page tokens masked."""
    if not params:
        return path
    shown = [(k, MASK if k == "nextPage" else v) for k, v in params]
    return f"{path}?{urlencode(shown, safe='[]*')}"


def _ms_since(t0: float) -> int:
    return int(round((time.monotonic() - t0) * 1000))


def _outcome_text(outcome: _Reply | ApiError | TransportError) -> str:
    if isinstance(outcome, TransportError):
        return f"error: {outcome.message}"
    return str(outcome.status)


def _remember_tokens(data: Any) -> Any:
    """Register instance tokens found in an answer with the redactor, so they never get printed."""
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("token"), str):
            REDACTOR.add(item["token"])
    return data


def _page_items(reply: _Reply, path: str) -> list:
    """Parse one raw page; it must be a JSON list."""
    content = reply.data or b""
    try:
        items = json.loads(content) if content.strip() else None
    except ValueError:
        raise ApiError(reply.status, "the API answered with something that is not JSON: " + _text_start(content),
                       method="GET", path=path) from None
    if not isinstance(items, list):
        raise ApiError(reply.status, f"expected a JSON list from GET {path}, got {_json_kind(items)}",
                       method="GET", path=path)
    return items


def _json_kind(value: Any) -> str:
    return {dict: "an object", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)


# -- helpers: HTTP errors -----------------------------------------------------------------------

def _api_error(response: _Answer, method: str, shown: str) -> ApiError:
    """The ApiError subclass for a non-2xx answer, with the API's message and requestId."""
    status = response.status_code
    raw, message, request_id = _error_details(response)
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else ApiError)
    retry_after = None
    if status == 429 or status >= 500:
        retry_after = _retry_after(response.headers.get("Retry-After"))
    error = cls(status, message, request_id or _header_request_id(response), method, shown, retry_after)
    error.raw_message = raw  # unshortened API message, used to recognise "No ... found"
    return error


def _error_details(response: _Answer) -> tuple[str, str, str | None]:
    """(raw API message, shown message, requestId from the body) of an error answer."""
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        raw = body["message"]
        message = raw
        if body.get("providerMessage"):
            message += f" (provider: {body['providerMessage']})"
        request_id = body.get("requestId") if isinstance(body.get("requestId"), str) else None
    else:
        raw, request_id = "", None
        message = _text_start(response.content) or response.reason or "no message"
        if 300 <= response.status_code < 400:
            message = f"unexpected redirect to {response.headers.get('Location', '?')}"
    return raw, REDACTOR.redact(_cut(message)), request_id


def _header_request_id(response: _Answer) -> str | None:
    return response.headers.get(REQUEST_ID_HEADER) or None


def _text_start(content: bytes) -> str:
    text = " ".join(content.decode("utf-8", "replace").split())
    return REDACTOR.redact(_cut(text))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, fractional allowed, or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite
        return None
    return max(0.0, seconds)


# -- helpers: transport errors ------------------------------------------------------------------

def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (args) and its causes."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 20:
        item = todo.pop()
        if item in found:
            continue
        found.append(item)
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        if isinstance(item.__cause__, BaseException):
            todo.append(item.__cause__)
    return found


def _has(chain: list[BaseException], *types: type) -> bool:
    return any(isinstance(e, types) for e in chain)


def _classify(exc: BaseException) -> tuple[str, bool, bool]:
    """(message, ambiguous, retryable) for a transport exception. Messages never quote the exception
    text: it is kept as the chained cause instead. Anything that failed while connecting was not sent."""
    chain = _chain(exc)
    if _has(chain, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed", False, False
    if _has(chain, _ConnectError):
        return _connect_failure(chain), False, True
    if _has(chain, TimeoutError):
        return "read timeout", True, True
    if _has(chain, http.client.RemoteDisconnected):
        return "connection closed by the server without an answer", True, True
    if _has(chain, ConnectionResetError):
        return "connection reset", True, True
    if _has(chain, http.client.IncompleteRead):
        return "answer cut short", True, True
    if _has(chain, ssl.SSLError):
        return "TLS error", True, True
    return f"connection error ({type(exc).__name__})", True, True


def _connect_failure(chain: list[BaseException]) -> str:
    if _has(chain, socket.gaierror):
        return "DNS lookup failed"
    if _has(chain, ConnectionRefusedError):
        return "connection refused"
    if _has(chain, TimeoutError):
        return "connect timeout"
    if _has(chain, ssl.SSLError):
        return "TLS handshake failed"
    return "could not connect"


def _transport_failure(exc: Exception, method: str,
                       shown: str) -> _TransportFailure:
    message, ambiguous, retryable = _classify(exc)
    return _TransportFailure(message, ambiguous, method, shown, retryable)


def _ambiguous(error: Exception) -> bool:
    """For a create: may the server have acted on a request that failed this way?"""
    if isinstance(error, TransportError):
        return error.ambiguous
    return isinstance(error, ServerError)


def _retryable(error: Exception) -> bool:
    """Can trying again help? 429, 5xx and transport errors yes, other 4xx no."""
    if isinstance(error, _TransportFailure):
        return error.retryable
    if isinstance(error, TransportError):
        return True
    return isinstance(error, (RateLimited, ServerError))
