"""What an answer of the API means, apart from how it was fetched: its JSON (bounded in nesting),
the error an HTTP status maps to (with the API's own message, made fit to print), the ids the API
gives, and ``Retry-After``. Server text never reaches a user but through ``server_text``."""

from __future__ import annotations

import email.utils
import json
import time
from typing import TYPE_CHECKING, Any, TypeGuard

from ..errors import ApiError, BadRequest, Conflict, NotFound, RateLimited, ServerError, Unauthorized
from ..secret import REDACTOR, sanitize

if TYPE_CHECKING:
    from .transport import Answer

MAX_MESSAGE = 300
MAX_DEPTH = 100  # JSON nesting the API's answers need is under 10; deeper is refused, never parsed on
TOTAL_HEADER = "elements-total-count"
REQUEST_ID_HEADER = "elements-request-id"
_CONTAINERS = (dict, list)  # json.loads makes exactly these, never subclasses
_STATUS_ERRORS = {400: BadRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict, 429: RateLimited}


def usable_id(value: Any) -> TypeGuard[int]:
    """An id as the API documents them: an integer (not a boolean, not a string of digits), >= 0."""
    return type(value) is int and value >= 0


def loads(content: bytes) -> Any:
    """The JSON of an answer (None if empty), its tokens registered before anything can print it;
    ValueError if it is not JSON (cut short?) or nests deeper than MAX_DEPTH (checked without recursion)."""
    deep = f"JSON nested deeper than the limit of {MAX_DEPTH} levels"
    try:
        value = json.loads(content) if content.strip() else None
    except RecursionError:
        raise ValueError(deep) from None
    except ValueError:
        raise ValueError(f"{len(content)} bytes that are not JSON (cut short?)") from None
    level: list[Any] = [value] if type(value) in _CONTAINERS else []  # the containers at depth 1, 2, ...
    for _ in range(MAX_DEPTH):
        level = [c for v in level for c in (v.values() if type(v) is dict else v) if type(c) in _CONTAINERS]
    if level:
        raise ValueError(deep)
    for item in value if isinstance(value, list) else [value]:  # tokens are never printed
        if isinstance(item, dict) and isinstance(item.get("token"), str):
            REDACTOR.add(item["token"], token=True)
    return value


def announced_total(reply: Answer) -> int | None:
    value = (reply.headers.get(TOTAL_HEADER) or "").strip()
    return int(value) if value.isdigit() and len(value) < 12 else None


def json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", type(None): "nothing", bool: "a boolean"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def api_error(answer: Answer, method: str, shown: str) -> ApiError:
    """The ApiError subclass for a non-2xx answer, with the API's message and requestId."""
    status = answer.status
    raw, message, body_id = error_details(answer)
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else ApiError)
    error = cls(status, message, request_id(answer, body_id), method, shown)
    if status == 429 or status >= 500:
        error.retry_after = retry_after(answer.headers.get("Retry-After"))
    error.raw_message = raw  # the API's message, unshortened, to recognise "No instances found"
    return error


def error_details(answer: Answer) -> tuple[str, str, Any]:
    """(raw API message, shown message, requestId from the body) of an error answer. Only the
    ``message`` (and ``providerMessage``) of a JSON error is shown (``server_text``), any other body described."""
    try:
        body = loads(answer.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        raw = message = body["message"]
        if isinstance(body.get("providerMessage"), str) and body["providerMessage"]:
            message += f" (provider: {body['providerMessage']})"
        return raw, server_text(message), body.get("requestId")
    if 300 <= answer.status < 400:
        return "", "unexpected redirect (not followed)", None
    kind = (answer.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    reason = server_text(answer.reason or "", 60)
    described = f"{len(answer.content)} bytes of {sanitize(kind)[:60]}"
    return "", f"{reason + ', ' if reason else ''}no JSON error message ({described})", None


def server_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """Server text made fit to print: every whole form of a secret masked on the full text, then
    control characters removed, then cut short, then any piece of a secret left at a cut edge masked."""
    text = sanitize(REDACTOR.redact(text))
    return REDACTOR.redact(text if len(text) <= limit else text[: limit - 3] + "...", edges=True)


def request_id(answer: Answer, body_id: Any = None) -> str | None:
    """The answer's requestId, from its JSON error (``body_id``) or else its header, fit to print."""
    value = body_id if isinstance(body_id, str) and body_id else answer.headers.get(REQUEST_ID_HEADER)
    return server_text(value, 64) if value else None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds, fractional allowed, or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # parsedate_to_datetime raises on what it cannot parse (Python 3.10+)
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
