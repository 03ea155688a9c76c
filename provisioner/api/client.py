"""The one module that talks HTTP to the Cloud Elements platform API: retries and backoff, the rate budget
shared by the workers, the error each status maps to, paging and statistics (the wire is ``transport.py``,
what an answer means ``answers.py``). Secrets leave only on the wire, every trace line and error redacted;
a create is retried only when it certainly did not reach the server (else ``AmbiguousCreate``); nothing
hangs. Callers see parsed JSON or a ``ProvisionerError``. The guarantees: docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..errors import (
    AmbiguousCreate,
    ApiError,
    InconsistentListing,
    Interrupted,
    NotFound,
    RateLimited,
    SendLater,
    ServerError,
    TransportError,
    WaitTooLong,
)
from ..interrupt import StopFlag
from ..secret import MASK, REDACTOR, Secret, json_default, sanitize
from ..urls import check_base_url
from .answers import TOTAL_HEADER, announced_total, api_error, json_kind, loads, request_id, usable_id
from .ratelimit import RateBudget
from .stats import RequestStats

if TYPE_CHECKING:
    from .transport import Answer

NEXT_PAGE_HEADER = "elements-next-page-token"
MAX_PAGES = 5_000  # hard cap on one listing: 1,000,000 instances at 200 a page
# The documented answer of an empty listing: a 404 with exactly this message (any other 404 is an error).
EMPTY_LISTING = "No instances found"
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # an answer's size once decompressed (--max-answer-bytes)
NETWORK_HINT = (
    "check CE_API_URL (or the target's url), CE_USER_SECRET and CE_ORGANIZATION_SECRET, "
    "the network and any HTTPS_PROXY; or try --local for the built-in emulator"
)
NOTICE_INTERVAL = 5.0  # at most one "retrying" line on stderr this often (without -v)


@dataclass(frozen=True)
class ClientSettings:
    """Network behaviour of one run; see the project documentation for each knob."""

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    deadline: float = 60.0  # one whole request (connect, send, the complete answer), per attempt
    max_attempts: int = 10  # per request, first try included
    max_retry_time: float = 120.0  # total wall time per request across its retries
    backoff_base: float = 0.1  # full jitter: uniform(0, min(cap, base * 2**retry)), >= Retry-After
    backoff_cap: float = 1.0
    parallelism: int = 8  # connections kept alive (one per worker thread)
    page_size: int = 200
    max_rate: float | None = None  # requests/second ceiling; None = none until the API throttles
    max_answer_bytes: int = MAX_ANSWER_BYTES  # an answer larger than this once decompressed fails


class ReadOnlyClient:
    """Typed read calls (listings, one instance, element definitions). It cannot write: read-only
    commands such as ``drift`` are built on this class alone, and ``_call`` refuses any method but GET."""

    _WRITES_ALLOWED = False

    def __init__(
        self,
        base_url: str,
        user_secret: Secret,
        organization_secret: Secret,
        settings: ClientSettings,
        *,
        budget: RateBudget | None = None,
        stats: RequestStats | None = None,
        trace: Callable[[str], None] | None = None,
        stop: StopFlag | None = None,
        notice: Callable[[str], None] | None = None,
    ):
        self.base_url = check_base_url(base_url)
        self.settings = settings
        self.budget = budget if budget is not None else RateBudget(settings.max_rate)
        self.stats = stats if stats is not None else RequestStats()
        self._trace = trace
        self._notice = notice
        self._last_notice = -math.inf
        self.stop = stop if stop is not None else StopFlag()
        self._secrets = (Secret(user_secret), Secret(organization_secret))  # revealed only in each header
        from .transport import Transport  # imported here: validate and render never load requests

        self._transport = Transport(self.base_url, settings, self.stop)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> ReadOnlyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:  # the keep-alive connections; safe to call twice
        self.close()

    # -- API calls --------------------------------------------------------------------------

    def instance_pages(self, tags: Sequence[str] = (), hydrate: bool = True) -> Generator[list, None, None]:
        """Every instance (or those carrying every tag in ``tags``), a page at a time, each requested when the
        previous one was handed over (``hydrate=False``: without configuration). InconsistentListing if a page
        token repeats, more pages come than the announced total (or MAX_PAGES) allows, or another count."""
        params = [("tags[]", t) for t in tags] + ([] if hydrate else [("hydrate", "false")])
        seen: set[str] = set()
        totals: set[int] = set()
        token, pages, count, limit = "", 0, 0, MAX_PAGES
        while True:
            answer = self._page(params, token)
            if answer is None:  # the API's 404 "No instances found" to the first page: an empty collection
                break
            pages += 1
            total = announced_total(answer)
            if total is not None:  # the announced total bounds the number of pages
                totals.add(total)
                limit = min(limit, max(1, math.ceil(total / max(1, self.settings.page_size))) + 1)
            token = (answer.headers.get(NEXT_PAGE_HEADER) or "").strip()
            if token and token in seen:
                raise InconsistentListing(f"GET /instances: the API repeated a page token after {pages} pages")
            if token and pages >= limit:
                bound = "the announced total allows" if total is not None else "the hard limit"
                raise InconsistentListing(f"GET /instances: still more pages after {pages} (more than {bound})")
            seen.add(token)
            try:  # tokens are registered before anything can print them
                items = loads(answer.content)
            except ValueError as exc:
                raise InconsistentListing(
                    f"GET {self.base_url}/instances: answered {answer.status} with {exc}"
                ) from None
            if not isinstance(items, list):
                raise InconsistentListing(f"GET /instances: expected a JSON list, got {json_kind(items)}")
            del answer
            count += len(items)
            yield items
            if not token:
                break
        # With a tags[] filter the API may announce the whole collection's total (undocumented): there,
        # only more items than announced is a contradiction. Without one, any difference is.
        if totals and count not in totals and ("tags[]" not in dict(params) or count > max(totals)):
            raise InconsistentListing(
                f"GET /instances announced {' then '.join(map(str, sorted(totals)))} "
                f"item(s) ({TOTAL_HEADER}) but {count} arrived"
            )

    def instance_total(self, tags: Sequence[str] = ()) -> int | None:
        """How many instances the listing with ``tags`` holds, as ``elements-total-count`` on a page of one item
        announces it; None when none is announced or the page is not a JSON list (a cut answer is not trusted)."""
        answer = self._page([("tags[]", t) for t in tags] + [("hydrate", "false")], "", page_size=1)
        if answer is None:
            return 0
        try:
            return announced_total(answer) if isinstance(loads(answer.content), list) else None
        except ValueError:
            return None

    def get_instance(self, instance_id: int | str) -> dict:  # NotFound if there is no such instance
        return self._json("GET", _instance_path(instance_id))

    def get_element(self, key: str) -> Any:  # ``GET /elements/{key}``: the element's metadata
        return self._json("GET", f"/elements/{_segment(key)}")

    def element_keys(self) -> Any:  # ``GET /elements/keys``: every element the catalog offers
        return self._json("GET", "/elements/keys")

    def element_configuration(self, key: str) -> Any:  # ``GET /elements/{key}/configuration``: its definitions
        return self._json("GET", f"/elements/{_segment(key)}/configuration")

    def ping(self, hub: str, token: Secret) -> Any:  # ``GET /hubs/{hub}/ping`` with the instance's token: its health
        return self._json("GET", f"/hubs/{_segment(hub)}/ping", element=token)

    # -- paging -----------------------------------------------------------------------------

    def _page(self, params: list[tuple[str, str]], token: str, page_size: int = 0) -> Answer | None:
        """One page, unparsed; None for the documented empty answer to the first page (EMPTY_LISTING)."""
        size = str(page_size or self.settings.page_size)
        paging = [("pageSize", size), *params, *([("nextPage", token)] if token else [])]
        try:
            return self._call("GET", "/instances", params=paging)
        except NotFound as exc:
            if not token and exc.raw_message == EMPTY_LISTING:
                return None
            url = f"{self.base_url}/instances"
            if token:
                raise InconsistentListing(f"GET {url}: a next page answered 404 ({exc.message})") from None
            message = f"{exc.message}; {url} is not an instance listing"
            wrong = ApiError(404, message, exc.request_id, "GET", "/instances")
            wrong.hint = (
                "the API base URL must end with /elements/api-v2, e.g. https://api.cloud-elements.com/elements/api-v2; "
                f'an empty organization answers 404 "{EMPTY_LISTING}"'
            )
            raise wrong from None

    # -- one call, with retries -------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: Any = None,
        create: bool = False,
        element: Secret | None = None,
        later: SendLater | None = None,
    ) -> Answer:
        """One API call's 2xx answer, or raise. 429, 5xx and most transport errors are retried after a
        full-jitter backoff (at least Retry-After) within the retry limits, unless the run is stopping or
        it is a create of unknown outcome (AmbiguousCreate); a create refused with 429 raises SendLater, and
        is tried again by a call given that ``later`` (its attempts go on). A request that never left is not counted."""
        if method != "GET" and not self._WRITES_ALLOWED:
            raise RuntimeError(f"a read-only client cannot send {method}")
        data = None if body is None else json.dumps(body, default=json_default).encode("utf-8")
        shown = _display(path, params)
        authorization = f"User {self._secrets[0].reveal()}, Organization {self._secrets[1].reveal()}"
        if element is not None:
            authorization += f", Element {element.reveal()}"
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        settings, started, attempt = self.settings, time.monotonic(), 0
        if later is not None:  # its Retry-After first, then its attempts go on
            started, attempt = later.started, later.attempt
            if self.stop.wait(later.at - time.monotonic()):
                self.stop.check(sent=False)
        while True:
            attempt += 1
            t0 = time.monotonic()
            outcome = self._send(method, url, data, shown, authorization, started, attempt)
            self.stats.record(method, getattr(outcome, "status", None), retry=attempt > 1)
            what = f"error: {outcome.message}" if isinstance(outcome, TransportError) else outcome.status
            line = f"HTTP {method} {shown} -> {what} ({round((time.monotonic() - t0) * 1000)} ms)"
            if not isinstance(outcome, (ApiError, TransportError)):
                self._emit(line)
                return outcome
            # A create is not tried again when the server may have acted on it (AmbiguousCreate).
            unknown = outcome.ambiguous if isinstance(outcome, TransportError) else isinstance(outcome, ServerError)
            if create and unknown:
                self._emit(f"{line}; outcome unknown, not retried")
                self.stop.check()
                raise AmbiguousCreate(outcome, answered=isinstance(outcome, ApiError)) from outcome
            ceiling = min(settings.backoff_cap, settings.backoff_base * 2.0 ** min(attempt - 1, 60))
            delay = max(random.uniform(0.0, ceiling), getattr(outcome, "retry_after", None) or 0.0)
            if self.stop.is_set():  # a request the interrupt ended is not retried
                self._emit(f"{line}; not retried: the run is stopping")
            else:
                self._give_up(outcome, attempt, started, delay, line)  # raises unless it may be retried
                # A create refused (not made) waits in place until 429s are known not to follow the rate.
                later_create = create and isinstance(outcome, RateLimited) and self.budget.refusals_random
                again = "sent again after the other writes, at least" if later_create else "retrying"
                self._emit(f"{line}; {again} in {delay:.2f} s (attempt {attempt + 1}/{settings.max_attempts})")
                self._retrying(method, shown, outcome, attempt, started)
                if later_create:
                    raise SendLater(attempt, started, time.monotonic() + delay)
                if not self.stop.wait(delay):
                    continue
            # Stopping. ``sent`` False when the server provably did nothing with the last attempt (a 429,
            # or refused before it was sent): the change was not done.
            self.stop.check(sent=not isinstance(outcome, RateLimited) and getattr(outcome, "ambiguous", True))

    def _give_up(self, error: ApiError | TransportError, attempt: int, started: float, delay: float, line: str) -> None:
        """Return if ``error`` may be tried again after ``delay`` seconds; else trace why and raise the error
        the call ends with (WaitTooLong, which stops the run, for a Retry-After past the budget)."""
        settings, spent = self.settings, time.monotonic() - started
        if not error.retryable:
            why = ""
        elif attempt >= settings.max_attempts:
            why = f"; giving up after {attempt} attempts"
        elif spent + delay > settings.max_retry_time:
            why = f"; giving up, retry time budget of {settings.max_retry_time:g} s exhausted"
        else:
            return
        self._emit(line + why)
        if isinstance(error, TransportError) and error.retryable:
            error.message += f" ({attempt} attempt{'s' if attempt != 1 else ''} over {spent:.1f} s)"
            error.hint = NETWORK_HINT
        wait = getattr(error, "retry_after", None)
        if isinstance(error, ApiError) and wait and wait > settings.max_retry_time:
            raise WaitTooLong(wait, settings.max_retry_time, error.method, error.path) from error.__cause__
        raise error from error.__cause__

    def _send(
        self, method: str, url: str, data: bytes | None, shown: str, authorization: str, started: float, attempt: int
    ) -> Answer | ApiError | TransportError:
        """One attempt, after the rate budget: the 2xx answer or the error it maps to (not raised). The
        first attempt has the whole ``deadline``, a retry ends with the retry budget."""
        settings = self.settings
        budget_ends = started + settings.max_retry_time
        try:  # the rate budget; WaitTooLong when the API asked every request to wait past this one's budget
            with self.stop.waiting():
                acquired = self.budget.acquire(wait=self.stop.wait, deadline=budget_ends)
            if not acquired and self.budget.paused_until > budget_ends:
                wait = self.budget.paused_until - time.monotonic()
                raise WaitTooLong(wait, settings.max_retry_time, method, shown)
            self.stop.check(sent=False)
        except Interrupted as exc:  # a signal while waiting: the request never left
            exc.sent = False
            raise
        deadline = settings.deadline
        if attempt > 1:
            deadline = max(0.1, min(deadline, budget_ends - time.monotonic()))
        try:
            answer = self._transport.send(method, url, data, authorization, deadline)
        except TransportError as exc:
            exc.method, exc.path, exc.url = method, shown, self.base_url
            return exc
        if 200 <= answer.status < 300:
            self.budget.on_success()
            return answer
        if answer.status == 407:
            proxy = f"the proxy {self._transport.proxy_display} refused the request: 407 Proxy Authentication Required"
            hint = "check the user and password in HTTPS_PROXY / HTTP_PROXY"
            refused = TransportError(proxy, False, retryable=False, hint=hint)
            refused.method, refused.path = method, shown
            return refused
        error = api_error(answer, method, shown)
        if answer.status == 429:
            self.budget.on_throttle(error.retry_after)
        return error

    def _json(self, method: str, path: str, body: Any = None, **call: Any) -> Any:
        """One call whose 2xx answer must be JSON (or empty)."""
        return self._parsed(self._call(method, path, body=body, **call), method, path)

    def _parsed(self, answer: Answer, method: str, path: str) -> Any:
        """The JSON of a 2xx answer (None if empty); ApiError naming the URL if it is not JSON or too deep."""
        try:
            return loads(answer.content)
        except ValueError as exc:
            what = f"{self.base_url}{path} answered {answer.status} with {exc}"
            raise ApiError(answer.status, what, request_id(answer), method, path) from None

    def _retrying(self, method: str, shown: str, error: Exception, attempt: int, started: float) -> None:
        """Say on stderr, at most every few seconds and even without -v, that requests are being retried."""
        now = time.monotonic()
        if self._notice is None or now - self._last_notice < NOTICE_INTERVAL:
            return
        self._last_notice = now
        what = error.message if isinstance(error, TransportError) else f"HTTP {getattr(error, 'status', '?')}"
        tries = f"attempt {attempt + 1}/{self.settings.max_attempts}, {now - started:.1f} s so far"
        self._notice(REDACTOR.redact(f"retrying: {method} {self.base_url}{shown}: {what} ({tries})"))

    def _emit(self, line: str) -> None:
        if self._trace is not None:
            self._trace(REDACTOR.redact(line))


class Client(ReadOnlyClient):
    """The read calls plus the writes: create, update, patch and delete instances."""

    _WRITES_ALLOWED = True

    def create_instance(self, body: dict, later: SendLater | None = None) -> dict:
        """``POST /instances``; AmbiguousCreate when the outcome cannot be known (a 2xx answer too, if it
        is not an instance with an id and a token); SendLater when refused with 429 (``later``: sent again)."""
        answer = self._call("POST", "/instances", body=body, create=True, later=later)
        try:
            data = self._parsed(answer, "POST", "/instances")
        except ApiError as exc:
            raise AmbiguousCreate(exc, answered=True) from None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not usable_id(data.get("id")) or not isinstance(token, str) or not token:
            what = f"the API answered the create with {json_kind(data)}, not an instance with an id and a token"
            raise AmbiguousCreate(ApiError(answer.status, what, request_id(answer), "POST", "/instances"), True)
        return data

    def update_instance(self, instance_id: int | str, body: dict) -> dict:  # PUT with a full body
        return self._json("PUT", _instance_path(instance_id), body)

    def reauthenticate_instance(self, instance_id: int | str, body: dict) -> dict:
        """``PUT /instances/{id}?reAuthenticate=true``: the provider checks the credentials again."""
        return self._json("PUT", _instance_path(instance_id), body, params=[("reAuthenticate", "true")])

    def set_enabled(self, instance_id: int | str, enabled: bool) -> None:
        """``PUT /instances/{id}/enabled`` (enable) or ``DELETE`` (disable)."""
        self._call("PUT" if enabled else "DELETE", f"{_instance_path(instance_id)}/enabled")

    def patch_instance(self, instance_id: int | str, body: dict) -> dict:  # PATCH with a partial body
        return self._json("PATCH", _instance_path(instance_id), body)

    def delete_instance(self, instance_id: int | str) -> bool:
        """``DELETE /instances/{id}``: True if deleted now, False if it was already gone (404)."""
        try:
            self._call("DELETE", _instance_path(instance_id))
        except NotFound:
            return False
        return True


def _segment(value: str) -> str:
    """One URL path segment, percent-encoded (every caller has checked that it is not empty)."""
    return quote(value, safe="")


def _instance_path(instance_id: Any) -> str:
    """``/instances/{id}``: only an id the API could have given (an integer) is ever put in a URL."""
    if not usable_id(instance_id):
        shown = sanitize(repr(instance_id))[:80]
        raise InconsistentListing(f"instance id {shown} is not an integer: never used in a URL")
    return f"/instances/{instance_id}"


def _display(path: str, params: list[tuple[str, str]] | None) -> str:
    """The path as shown in traces and errors: relative to base_url, page tokens masked."""
    if not params:
        return path
    shown = [(k, MASK if k == "nextPage" else v) for k, v in params]
    return f"{path}?{urlencode(shown, safe='[]*')}"
