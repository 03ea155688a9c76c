"""A local, real-HTTP emulator of the Cloud Elements instance API.

Every test of the project and every new user's first run talks to this instead of a paid Cloud
Elements account. It listens on loopback only, speaks HTTP/1.1 with keep-alive, keeps its state in
SQLite (``store.py``), serves the element catalog (``catalog.py``) and misbehaves on request
(``faults.py``): latency, 5xx, 429 with Retry-After, connections reset before processing, responses
lost after processing, and responses slower than the client's patience.

Three layers, top to bottom:

* ``Api``: the API rules, as a function of (method, path, query, headers, body) -> ``Response``.
* ``_Handler`` / ``_Server``: HTTP plumbing on ``http.server``, fault injection, request logging.
* ``Emulator``: lifecycle (start in a thread, serve in the foreground, stop).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import io
import ipaddress
import json
import re
import secrets
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from .catalog import Catalog, Element
from .faults import FaultConfig, FaultDecider
from .store import InstanceRow, ListQuery, Store, StoreClosed

BASE_PATH = "/elements/api-v2"
MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 200
IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
STOP_GRACE_S = 3.0  # how long stop() waits for handler threads
AUTH_MESSAGE = "Invalid Organization or User secret, or invalid Element token provided."
USER = {"id": 1, "emailAddress": "emulator@localhost.invalid", "firstName": "Emulator", "lastName": "User"}
_TAG_RE = re.compile(r"<[/!?]?[A-Za-z][^<>]*>|<!--.*?-->|<![^<>]*>", re.DOTALL)
_JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


# -- small helpers ------------------------------------------------------------------------------


class ApiFailure(Exception):
    """An error answer: status and message (sent as {requestId, message})."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RawJson(bytes):
    """A body already serialised (list pages assembled from cached instance fragments)."""


@dataclass
class Response:
    """What the API answers: a status, a JSON-able body (None: empty body) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def new_request_id() -> str:
    """A request id like Cloud Elements': 24 lowercase hex digits."""
    return secrets.token_hex(12)


def error_response(status: int, message: str, request_id: str, headers: dict | None = None) -> Response:
    """The platform's error body."""
    return Response(status, {"requestId": request_id, "message": message}, dict(headers or {}))


def sanitize_html(text: str) -> str:
    """Strip HTML markup (tags, comments) as the platform does for names and tags; keep the rest."""
    return _TAG_RE.sub("", text)


def to_property_value(value: object) -> str | None:
    """A configuration value as the API stores it: a string (or null). Strings are kept byte for
    byte; booleans become "true"/"false", numbers their decimal text, objects compact JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _check_text(text: str, what: str) -> str:
    """Reject strings that cannot be stored as UTF-8 (lone surrogates from \\ud800 escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiFailure(400, f"{what} is not valid Unicode") from None
    return text


def encode_page_token(last_id: int) -> str:
    """Opaque keyset token: the id the next page starts after."""
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode("ascii")).decode("ascii").rstrip("=")


def decode_page_token(token: str | None) -> int:
    """The id encoded by ``encode_page_token``; 0 for no token; ApiFailure 400 if malformed."""
    if not token:
        return 0
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        prefix, _, number = raw.decode("ascii").partition(":")
        if prefix != "v1" or not number.isdigit():
            raise ValueError(token)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiFailure(400, f"Invalid nextPage token '{token}'") from None


def _last(query: dict[str, list[str]], name: str) -> str | None:
    """The last value of a query parameter, or None."""
    values = query.get(name)
    return values[-1] if values else None


def _parse_json(body: bytes) -> Any:
    """Decode a JSON request body; ApiFailure 400 when it is not JSON."""
    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ApiFailure(400, f"Invalid JSON in the request body: {detail}") from None


def _is_json_type(content_type: str | None) -> bool:
    """True for application/json (with parameters) and application/*+json."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# -- the API ------------------------------------------------------------------------------------


@dataclass
class ApiRequest:
    """One request as the API layer sees it."""

    method: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    json: Any = None


Route = tuple[dict[str, Callable[..., Response]], tuple]


class Api:
    """The rules of the Cloud Elements instance API, independent of HTTP plumbing."""

    def __init__(self, catalog: Catalog, store: Store, user_secret: str, organization_secret: str):
        self.catalog = catalog
        self.store = store
        self._user = user_secret.encode("utf-8")
        self._org = organization_secret.encode("utf-8")
        self._fragments: dict[tuple[int, bool], tuple[tuple, bytes]] = {}

    # -- entry point ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
               request_id: str) -> Response:
        """Answer one request (path without the query string)."""
        try:
            return self._handle(method, path, query, headers, body)
        except ApiFailure as exc:
            return error_response(exc.status, exc.message, request_id, exc.headers)

    def _handle(self, method: str, path: str, query: str, headers: Mapping[str, str],
                body: bytes) -> Response:
        """Route, authenticate and dispatch; raises ApiFailure for error answers."""
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            raise ApiFailure(404, f"No resource found at {path}")
        if not self._authorized(headers.get("Authorization")):
            raise ApiFailure(401, AUTH_MESSAGE)
        rest = path[len(BASE_PATH):].strip("/")
        segments = [unquote(s) for s in rest.split("/")] if rest else []
        route = self._resolve(segments)
        if route is None:
            raise ApiFailure(404, f"No resource found at {path}")
        methods, args = route
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            raise ApiFailure(405, f"Method {method} is not allowed on {path} (allowed: {allowed})",
                             {"Allow": allowed})
        request = ApiRequest(method, segments, parse_qs(query, keep_blank_values=True), headers, body)
        if method in ("POST", "PUT", "PATCH"):
            if not _is_json_type(headers.get("Content-Type")):
                raise ApiFailure(415, "Unsupported media type: the request body must be application/json")
            request.json = _parse_json(body)
            if not isinstance(request.json, dict):
                raise ApiFailure(400, "The request body must be a JSON object")
        return methods[method](request, *args)

    def _authorized(self, header: str | None) -> bool:
        """Check ``User <x>, Organization <y>[, Element <t>]`` (any order) in constant time."""
        if not header:
            return False
        parts: dict[str, bytes] = {}
        for part in header.split(","):
            pieces = part.split(None, 1)
            if not pieces:
                continue
            scheme = pieces[0].lower()
            if len(pieces) != 2 or scheme not in ("user", "organization", "element") or scheme in parts:
                return False
            # http.server decodes headers as latin-1: get the bytes the client sent back.
            parts[scheme] = pieces[1].strip().encode("latin-1", "replace")
        user_ok = hmac.compare_digest(parts.get("user", b""), self._user)
        org_ok = hmac.compare_digest(parts.get("organization", b""), self._org)
        return user_ok and org_ok and "user" in parts and "organization" in parts

    def _resolve(self, s: list[str]) -> Route | None:
        """Map path segments to {method: handler} and the handler's arguments."""
        if s and s[0] == "elements":
            return self._resolve_elements(s)
        if s and s[0] == "instances":
            return self._resolve_instances(s)
        return None

    def _instance_methods(self) -> dict[str, Callable[..., Response]]:
        """Handlers of /instances/{id}."""
        return {"GET": self._get_instance, "PUT": self._put_instance,
                "PATCH": self._patch_instance, "DELETE": self._delete_instance}

    def _resolve_elements(self, s: list[str]) -> Route | None:
        """Routes under /elements."""
        n = len(s)
        if n == 1:
            return {"GET": self._list_elements}, ()
        if n == 2:
            if s[1] == "keys":
                return {"GET": self._element_keys}, ()
            return {"GET": self._get_element}, (s[1],)
        if n == 3 and s[2] == "configuration":
            return {"GET": self._element_configuration}, (s[1],)
        if n == 3 and s[2] == "instances":
            return {"GET": self._list_element_instances, "POST": self._create_for_element}, (s[1],)
        if n == 4 and s[2] == "instances":
            return {m: self._scoped(fn) for m, fn in self._instance_methods().items()}, (s[1], s[3])
        return None

    def _resolve_instances(self, s: list[str]) -> Route | None:
        """Routes under /instances."""
        n = len(s)
        if n == 1:
            return {"GET": self._list_instances, "POST": self._create}, ()
        if n == 2:
            if s[1] == "count":
                return {"GET": self._count}, ()
            return self._instance_methods(), (s[1],)
        if n == 3 and s[2] == "configuration":
            return {"GET": self._instance_configuration}, (s[1],)
        if n == 4 and s[2] == "configuration":
            return {"GET": self._get_config_record, "PATCH": self._patch_config_record}, (s[1], s[3])
        return None

    # -- elements -------------------------------------------------------------------------------

    def _element(self, key_or_id: object) -> Element:
        """The element, or ApiFailure 404."""
        element = self.catalog.find(key_or_id)
        if element is None:
            raise ApiFailure(404, f"No element found with key or id '{key_or_id}'")
        return element

    def _list_elements(self, req: ApiRequest) -> Response:
        """GET /elements: every element, without configuration definitions."""
        return Response(200, [e.public for e in self.catalog.elements])

    def _element_keys(self, req: ApiRequest) -> Response:
        """GET /elements/keys."""
        return Response(200, self.catalog.keys())

    def _get_element(self, req: ApiRequest, key_or_id: str) -> Response:
        """GET /elements/{keyOrId}: the element with its configuration definitions."""
        return Response(200, self._element(key_or_id).with_configuration())

    def _element_configuration(self, req: ApiRequest, key_or_id: str) -> Response:
        """GET /elements/{keyOrId}/configuration: the definitions alone."""
        return Response(200, self._element(key_or_id).records)

    # -- instance bodies ------------------------------------------------------------------------

    def _element_from_body(self, body: dict) -> Element:
        """The element named by ``element.key`` or ``element.id`` of a create body."""
        ref = body.get("element")
        if ref is None:
            raise ApiFailure(400, "An element is required: give element.key or element.id")
        if not isinstance(ref, dict) or (ref.get("key") is None and ref.get("id") is None):
            raise ApiFailure(400, "element must be an object with a key or an id")
        return self._element(ref["key"] if ref.get("key") is not None else ref["id"])

    def _check_same_element(self, ref: object, row: InstanceRow) -> None:
        """PUT/PATCH may repeat the instance's element (its key or reported key), not change it."""
        if ref is None:
            return
        if not isinstance(ref, dict):
            raise ApiFailure(400, "element must be an object with a key or an id")
        if ref.get("key") is not None:
            key = ref["key"]
        elif ref.get("id") is not None:
            found = self.catalog.find(ref["id"])
            key = found.key if found else None
        else:
            return
        if key not in (row.element_key, row.reported_key):
            raise ApiFailure(400, "The element of an instance cannot be changed")

    @staticmethod
    def _name(body: dict) -> str:
        """The sanitised, non-blank instance name of a body."""
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiFailure(400, "name must be a string")
        clean = sanitize_html(name or "")
        if not clean.strip():
            raise ApiFailure(400, "An instance name is required")
        return _check_text(clean, "name")

    @staticmethod
    def _tags(value: object) -> list[str]:
        """Sanitised tags (strings, or {name} objects as old docs show)."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise ApiFailure(400, "tags must be a list of strings")
        tags = []
        for tag in value:
            if isinstance(tag, dict) and isinstance(tag.get("name"), str):
                tag = tag["name"]
            if not isinstance(tag, str):
                raise ApiFailure(400, "tags must be a list of strings")
            tags.append(_check_text(sanitize_html(tag), "a tag"))
        return tags

    @staticmethod
    def _configuration(value: object) -> dict[str, str | None]:
        """A body's configuration map, values converted to stored property values."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ApiFailure(400, "configuration must be an object of key: value entries")
        return {key: to_property_value(v) for key, v in value.items()}

    @staticmethod
    def _validate(element: Element, config: dict) -> None:
        """400 for values outside allowed lists and for missing required entries (all named)."""
        problems = element.invalid_values(config)
        if problems:
            raise ApiFailure(400, "; ".join(problems))
        missing = element.missing_required(config)
        if missing:
            raise ApiFailure(400, "Missing required configuration entries: " + ", ".join(missing))

    def _element_of(self, row: InstanceRow) -> Element:
        """The element an instance was created with (a bare stand-in if the catalog lost it)."""
        return self.catalog.find(row.element_key) or Element({"id": 0, "key": row.element_key,
                                                              "name": row.element_key})

    def render(self, row: InstanceRow, hydrate: bool = True) -> dict:
        """The instance object of responses."""
        element = self._element_of(row)
        reported = self.catalog.find(row.reported_key) or element
        events = element.effective(row.configuration, "event.notification.enabled")
        obj = {"id": row.id, "name": row.name, "createdDate": row.created_date,
               "updatedDate": row.updated_date, "token": row.token, "element": reported.public,
               "elementId": reported.id, "tags": row.tags, "provisionInteractions": [], "valid": True,
               "disabled": False, "maxCacheSize": 0, "cacheTimeToLive": 0}
        if hydrate:
            obj["configuration"] = element.render_configuration(row.configuration)
        obj.update({"eventsEnabled": str(events).lower() == "true", "traceLoggingEnabled": False,
                    "cachingEnabled": False, "externalAuthentication": "none", "user": USER})
        return obj

    # -- instances ------------------------------------------------------------------------------

    def _create(self, req: ApiRequest, element: Element | None = None) -> Response:
        """POST /instances: validate, store, answer 200 with the instance."""
        body = req.json
        element = element or self._element_from_body(body)
        name = self._name(body)
        tags = self._tags(body.get("tags"))
        config = self._configuration(body.get("configuration"))
        self._validate(element, config)
        row = self.store.create_instance(name, element.key, element.reported_key, tags, config)
        return Response(200, self.render(row))

    def _create_for_element(self, req: ApiRequest, key_or_id: str) -> Response:
        """POST /elements/{keyOrId}/instances: the element comes from the path."""
        return self._create(req, self._element(key_or_id))

    def _list_instances(self, req: ApiRequest, element: Element | None = None) -> Response:
        """GET /instances: keyset-paged, filtered by tags[] / searchText, 404 when empty."""
        q = req.query
        raw_size = _last(q, "pageSize")
        try:
            page_size = int(raw_size) if raw_size not in (None, "") else DEFAULT_PAGE_SIZE
        except ValueError:
            raise ApiFailure(400, f"pageSize must be a positive integer, got '{raw_size}'") from None
        if page_size < 1:
            raise ApiFailure(400, f"pageSize must be a positive integer, got '{raw_size}'")
        tags = tuple(dict.fromkeys(t for t in q.get("tags[]", []) + q.get("tags", []) if t))
        search = (_last(q, "searchText") or "").lower() or None
        query = ListQuery(element.key if element else None, tags, search,
                          decode_page_token(_last(q, "nextPage")), min(page_size, MAX_PAGE_SIZE))
        rows, total, more = self.store.list_instances(query)
        if not rows:
            raise ApiFailure(404, "No instances found")
        hydrate = (_last(q, "hydrate") or "true").lower() != "false"
        headers = {"elements-total-count": str(total), "elements-returned-count": str(len(rows))}
        if more:
            headers["elements-next-page-token"] = encode_page_token(rows[-1].id)
        return Response(200, RawJson(b"[" + b",".join(self._fragment(r, hydrate) for r in rows) + b"]"), headers)

    def _fragment(self, row: InstanceRow, hydrate: bool) -> bytes:
        """One instance's JSON, cached until the instance changes: a 200-instance page is then cheap
        to serve, so the emulator does not hide the client's own cost in a benchmark."""
        signature = (row.name, row.updated_date, row.token, row.reported_key, tuple(row.tags),
                     tuple(sorted(row.configuration.items(), key=lambda kv: kv[0])), hydrate)
        cached = self._fragments.get((row.id, hydrate))
        if cached is not None and cached[0] == signature:
            return cached[1]
        fragment = json.dumps(self.render(row, hydrate), separators=(",", ":")).encode()
        if len(self._fragments) > 100_000:
            self._fragments.clear()
        self._fragments[(row.id, hydrate)] = (signature, fragment)
        return fragment

    def _list_element_instances(self, req: ApiRequest, key_or_id: str) -> Response:
        """GET /elements/{keyOrId}/instances: instances whose element or reported element match."""
        return self._list_instances(req, self._element(key_or_id))

    def _count(self, req: ApiRequest) -> Response:
        """GET /instances/count."""
        return Response(200, {"count": self.store.count_instances()})

    @staticmethod
    def _instance_id(text: str) -> int:
        """Parse an instance id; anything but a plain integer is a 404."""
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ApiFailure(404, f"No instance found with ID {text}")
        return int(text)

    def _row(self, text: str, scope: Element | None = None) -> InstanceRow:
        """The stored instance (in the element scope, if any), or 404."""
        row = self.store.get_instance(self._instance_id(text))
        if row is None or not self._in_scope(row, scope):
            raise ApiFailure(404, f"No instance found with ID {text}")
        return row

    @staticmethod
    def _in_scope(row: InstanceRow, scope: Element | None) -> bool:
        """True if no scope, or the instance belongs to the scope element (key or reported key)."""
        return scope is None or scope.key in (row.element_key, row.reported_key)

    def _scoped(self, handler: Callable[..., Response]) -> Callable[..., Response]:
        """Wrap an /instances/{id} handler for /elements/{keyOrId}/instances/{id}."""
        def scoped(req: ApiRequest, key_or_id: str, instance_id: str) -> Response:
            return handler(req, instance_id, self._element(key_or_id))
        return scoped

    def _update(self, text: str, scope: Element | None,
                change: Callable[[InstanceRow], InstanceRow]) -> Response:
        """Apply ``change`` to one instance atomically and answer with the result."""
        def checked(row: InstanceRow) -> InstanceRow:
            if not self._in_scope(row, scope):
                raise ApiFailure(404, f"No instance found with ID {text}")
            return change(row)

        row = self.store.update_instance(self._instance_id(text), checked)
        if row is None:
            raise ApiFailure(404, f"No instance found with ID {text}")
        return Response(200, self.render(row))

    def _get_instance(self, req: ApiRequest, text: str, scope: Element | None = None) -> Response:
        """GET /instances/{id}."""
        return Response(200, self.render(self._row(text, scope)))

    def _put_instance(self, req: ApiRequest, text: str, scope: Element | None = None) -> Response:
        """PUT /instances/{id}: replace name, tags and the whole configuration."""
        body = req.json

        def change(row: InstanceRow) -> InstanceRow:
            self._check_same_element(body.get("element"), row)
            name, tags = self._name(body), self._tags(body.get("tags"))
            config = self._configuration(body.get("configuration"))
            self._validate(self._element_of(row), config)
            return replace(row, name=name, tags=tags, configuration=config)

        return self._update(text, scope, change)

    def _patch_instance(self, req: ApiRequest, text: str, scope: Element | None = None) -> Response:
        """PATCH /instances/{id}: name and/or tags (replacing the list); configuration merged."""
        body = req.json

        def change(row: InstanceRow) -> InstanceRow:
            self._check_same_element(body.get("element"), row)
            name = self._name(body) if "name" in body else row.name
            tags = self._tags(body["tags"]) if "tags" in body else row.tags
            config = row.configuration
            if body.get("configuration") is not None:
                config = {**row.configuration, **self._configuration(body["configuration"])}
                self._validate(self._element_of(row), config)
            return replace(row, name=name, tags=tags, configuration=config)

        return self._update(text, scope, change)

    def _delete_instance(self, req: ApiRequest, text: str, scope: Element | None = None) -> Response:
        """DELETE /instances/{id}: 200 with an empty body."""
        row = self._row(text, scope)
        if not self.store.delete_instance(row.id):
            raise ApiFailure(404, f"No instance found with ID {text}")
        return Response(200, None)

    # -- configuration records ------------------------------------------------------------------

    def _records(self, row: InstanceRow) -> list[dict]:
        """The configuration records of an instance."""
        element = self._element_of(row)
        return [{"id": cid, "key": key, "propertyValue": element.shown_value(row.configuration, key)}
                for cid, key in element.config_ids(row.id, row.configuration)]

    def _instance_configuration(self, req: ApiRequest, text: str) -> Response:
        """GET /instances/{id}/configuration."""
        return Response(200, self._records(self._row(text)))

    @staticmethod
    def _record(records: list[dict], config_id: str) -> dict:
        """The record with that id, or 404."""
        for record in records:
            if str(record["id"]) == config_id:
                return record
        raise ApiFailure(404, f"No configuration found with ID {config_id}")

    def _get_config_record(self, req: ApiRequest, text: str, config_id: str) -> Response:
        """GET /instances/{id}/configuration/{configId}."""
        return Response(200, self._record(self._records(self._row(text)), config_id))

    def _patch_config_record(self, req: ApiRequest, text: str, config_id: str) -> Response:
        """PATCH /instances/{id}/configuration/{configId}: set one propertyValue."""
        body = req.json
        if "propertyValue" not in body:
            raise ApiFailure(400, "propertyValue is required")
        value = to_property_value(body["propertyValue"])

        def change(row: InstanceRow) -> InstanceRow:
            key = self._record(self._records(row), config_id)["key"]
            config = {**row.configuration, key: value}
            self._validate(self._element_of(row), config)
            return replace(row, configuration=config)

        self._update(text, None, change)
        return Response(200, self._record(self._records(self._row(text)), config_id))


# -- HTTP plumbing ------------------------------------------------------------------------------


class _DropConnection(Exception):
    """Abandon the current request without an answer (the emulator is stopping)."""


class _BodyError(Exception):
    """The request body could not be read as HTTP says; answer ``status`` and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests, applies faults, calls the Api, writes responses."""

    protocol_version = "HTTP/1.1"
    server_version = "CloudElementsEmulator/1.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    server: _Server

    # http.server's own logging goes to stderr: silence it, we log through the emulator.
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silenced (http.server would write to stderr)."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unsupported method) as JSON, then close."""
        self.close_connection = True
        status = HTTPStatus(code) if code in HTTPStatus._value2member_map_ else HTTPStatus.BAD_REQUEST
        request_id = new_request_id()
        try:
            self._write(error_response(status.value, message or status.phrase, request_id), request_id)
        except OSError:
            pass

    def _dispatch(self) -> None:
        """Handle one parsed request: body, faults, API, response, log."""
        emulator = self.server.emulator
        started = time.monotonic()
        path, _, query = self.path.partition("?")
        request_id = new_request_id()
        try:
            body = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._finish(error_response(exc.status, exc.message, request_id), request_id, path, query,
                         None, started)
            return
        fault = None
        if path == BASE_PATH or path.startswith(BASE_PATH + "/"):
            decider = emulator.decider  # one snapshot: faults may be reassigned meanwhile
            decision = decider.decide()
            fault = decision.fault
            self._pause(decision.delay_s)
            if fault == "reset":
                self._record(path, query, 0, fault, started)
                self._reset()
                return
            if fault == "error":
                response = error_response(decision.status, _FAULT_MESSAGES[decision.status], request_id)
                self._finish(response, request_id, path, query, fault, started)
                return
            if fault == "throttle":
                retry = f"{decider.config.retry_after:g}"
                response = error_response(429, f"Too many requests: retry after {retry} seconds",
                                          request_id, {"Retry-After": retry})
                self._finish(response, request_id, path, query, fault, started)
                return
            if fault == "slow":
                self._pause(decider.config.slow_ms / 1000.0)
        response = emulator.api.handle(self.command, path, query, self.headers, body, request_id)
        if fault == "lost":
            self._record(path, query, 0, fault, started)
            self._reset()
            return
        self._finish(response, request_id, path, query, fault, started)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def handle_one_request(self) -> None:
        """http.server's loop step, with stop and unexpected errors turned into a quiet close."""
        try:
            super().handle_one_request()
        except (_DropConnection, StoreClosed):
            self.close_connection = True
        except OSError:
            self.close_connection = True
        except Exception as exc:  # a bug: one line in the log, a 500 if still possible, no traceback
            self.close_connection = True
            self.server.emulator.log_line(f"emulator internal error: {type(exc).__name__}: {exc}")
            self.send_error(500, "Internal emulator error")

    def _pause(self, seconds: float) -> None:
        """Sleep without holding any lock; wake up early (and drop the request) on stop."""
        if seconds > 0 and self.server.emulator.stopping.wait(seconds):
            raise _DropConnection()

    def _read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            raise _BodyError(400, f"Invalid Content-Length '{length_text}'") from None
        if length > MAX_BODY_BYTES:
            raise _BodyError(413, f"Request body too large (limit {MAX_BODY_BYTES} bytes)")
        body = self.rfile.read(length)
        if len(body) < length:
            raise _DropConnection()  # the client went away mid-body
        return body

    def _read_chunked(self) -> bytes:
        """Decode a chunked request body."""
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1026) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"Request body too large (limit {MAX_BODY_BYTES} bytes)")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)

    def _write(self, response: Response, request_id: str) -> None:
        """Send status line, headers and body in one write (no Nagle/delayed-ACK stalls)."""
        if isinstance(response.body, RawJson):
            body = bytes(response.body)
        else:
            body = b"" if response.body is None else json.dumps(response.body, separators=(",", ":")).encode()
        status = HTTPStatus(response.status)
        lines = [f"{self.protocol_version} {status.value} {status.phrase}",
                 f"Server: {self.server_version}", f"Date: {self.date_time_string()}",
                 f"elements-request-id: {request_id}"]
        if body:
            lines.append(f"Content-Type: {_JSON_CONTENT_TYPE}")
        lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _finish(self, response: Response, request_id: str, path: str, query: str, fault: str | None,
                started: float) -> None:
        """Log the request (before answering, so the DB is current when the client sees it) and
        send the response; a failed send is logged as status 0."""
        log_id = self._record(path, query, response.status, fault, started)
        try:
            self._write(response, request_id)
        except OSError:
            self.close_connection = True
            if log_id is not None:
                self.server.emulator.store.set_request_status(log_id, 0)

    def _record(self, path: str, query: str, status: int, fault: str | None, started: float) -> int | None:
        """Write the request log row and the log line."""
        duration = (time.monotonic() - started) * 1000.0
        emulator = self.server.emulator
        log_id = emulator.store.record_request(self.command, path, query, status, fault, duration)
        target = f"{path}?{query}" if query else path
        emulator.log_line(f"{self.command} {target} -> {status} ({duration:.0f} ms)"
                          + (f" [{fault}]" if fault else ""))
        return log_id

    def _reset(self) -> None:
        """Close the connection abruptly: SO_LINGER {on, 0} makes close() send a TCP RST."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # drops the makefile() reference, so close() really closes the fd
        finally:
            sock.close()
        self.wfile = io.BytesIO()  # anything http.server still writes goes nowhere


_FAULT_MESSAGES = {
    500: "Internal server error (injected by the emulator)",
    502: "Bad gateway (injected by the emulator)",
    503: "Service unavailable (injected by the emulator)",
}


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks open connections so stop() can end them, and never prints
    tracebacks."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple, emulator: Emulator, family: int):
        self.address_family = family
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's getfqdn() (a reverse DNS lookup that can take seconds)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port

    def serve_until(self, stopping: threading.Event) -> None:
        """Accept connections until ``stopping`` is set; stop() wakes the wait by connecting once,
        so stopping takes no poll interval."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while not stopping.is_set():
                if selector.select(0.5) and not stopping.is_set():
                    self._handle_request_noblock()

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """Remember the connection, then hand it to a thread."""
        with self._idle:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        """Close the connection and forget it."""
        super().shutdown_request(request)
        with self._idle:
            self._connections.discard(request)
            self._idle.notify_all()

    def handle_error(self, request: object, client_address: object) -> None:
        """No tracebacks on stderr: connection errors are normal here."""

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and wait up to ``timeout`` for their threads."""
        with self._idle:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._connections and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))


@functools.lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The packaged catalog, loaded once per process (it is immutable)."""
    return Catalog.load()


def _loopback_bind_address(host: str) -> tuple[str, int]:
    """(address to bind, address family) for a loopback host; ValueError for anything else."""
    if host == "localhost":
        return "127.0.0.1", socket.AF_INET
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(f"the emulator only listens on loopback (127.0.0.0/8, ::1 or localhost), "
                         f"not {host!r}")
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


class Emulator:
    """The emulator: an HTTP server on loopback with SQLite state and optional faults."""

    def __init__(self, db_path: str | Path, user_secret: str, organization_secret: str,
                 host: str = "127.0.0.1", port: int = 0, faults: FaultConfig | None = None,
                 log_stream: Any = None):
        self._bind_host, self._family = _loopback_bind_address(host)
        if not user_secret or not organization_secret:
            raise ValueError("the emulator needs a non-empty user secret and organization secret")
        self.db_path = db_path
        self.host = host
        self.port = port
        self._user_secret = user_secret
        self._organization_secret = organization_secret
        self.log_stream = log_stream
        self._log_lock = threading.Lock()
        self.faults = faults or FaultConfig()
        self.stopping = threading.Event()
        self.catalog = default_catalog()
        self.store: Store | None = None
        self.api: Api | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop_started = False
        self._loop_done = threading.Event()
        self._stopped = False
        self._state_lock = threading.Lock()

    # -- faults ---------------------------------------------------------------------------------

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

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:PORT/elements/api-v2 (after start())."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self._bind_host}]" if self._family == socket.AF_INET6 else self._bind_host
        return f"http://{host}:{self.port}{BASE_PATH}"

    def _bind(self) -> None:
        """Open the store and bind the listening socket (once)."""
        with self._state_lock:
            if self._stopped:
                raise RuntimeError("the emulator was stopped; create a new one")
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            self.store = Store(self.db_path)
            self.api = Api(self.catalog, self.store, self._user_secret, self._organization_secret)
            try:
                self._server = _Server((self._bind_host, self.port), self, self._family)
            except BaseException:
                self.store.close()
                raise
            self.port = self._server.server_address[1]

    def _loop(self) -> None:
        """The accept loop; marks itself done however it ends."""
        try:
            self._server.serve_until(self.stopping)
        finally:
            self._loop_done.set()

    def start(self) -> str:
        """Serve in a daemon thread; return the base URL."""
        self._bind()
        self._loop_started = True
        self._thread = threading.Thread(target=self._loop, name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() or Ctrl-C; returns cleanly either way."""
        if self._server is None:
            self._bind()
        self._loop_started = True
        try:
            self._loop()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _wake_loop(self) -> None:
        """Connect once to the listening socket so the accept loop sees the stop at once."""
        try:
            with socket.create_connection((self._bind_host, self.port), timeout=0.5):
                pass
        except OSError:
            pass

    def stop(self) -> None:
        """Stop serving, end open connections, close sockets and the database. Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        self.stopping.set()
        server = self._server
        if server is not None:
            if self._loop_started and not self._loop_done.is_set():
                self._wake_loop()
                self._loop_done.wait(STOP_GRACE_S)
            server.server_close()
            server.close_connections(STOP_GRACE_S)
        if self._thread is not None:
            self._thread.join(STOP_GRACE_S)
        if self.store is not None:
            self.store.close()

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
        with self._log_lock:
            try:
                self.log_stream.write(line + "\n")
                self.log_stream.flush()
            except (OSError, ValueError):
                pass
