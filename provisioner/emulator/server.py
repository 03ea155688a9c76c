"""A local, real-HTTP emulator of the Cloud Elements instance API.

Every test of the project and every new user's first run talks to this instead of a paid Cloud
Elements account. It listens on loopback only, speaks HTTP/1.1 with keep-alive, keeps its state in
SQLite (``store.py``), serves the element catalog (``catalog.py``) and misbehaves on request
(``faults.py``): latency, 5xx, 429 with Retry-After, connections reset before processing, responses
lost after processing, and responses slower than the client's patience.

Three layers, top to bottom:

* ``Api``: the API rules, as a function of (method, path, query, headers, body) -> ``Response``.
* ``_Connection``: one client connection, served by a single-threaded asyncio event loop: HTTP/1.1
  framing (``http11.py``), fault injection (delays are loop timers, so the requests of all
  connections wait out their latency together), request logging, one write per response.
* ``Emulator``: lifecycle (serve the loop in a daemon thread or in the foreground, stop).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import gzip
import hmac
import ipaddress
import json
import re
import secrets
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from .catalog import Catalog, Element
from .faults import NO_FAULT, FaultConfig, FaultDecider, FaultDecision, retry_after_header
from .http11 import CONTINUE, BadRequest, BodyError, CloseSilently, Head, RequestReader, accepts_gzip
from .store import InstanceRow, ListQuery, Store, StoreClosed

BASE_PATH = "/elements/api-v2"
MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 200
IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
STOP_GRACE_S = 3.0  # how long stop() waits for the event loop to finish
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


def auth_parts(header: str | None) -> dict[str, bytes] | None:
    """The parts of ``User <x>, Organization <y>[, Element <t>]`` (any order) by lower-cased scheme,
    as the bytes the client sent; None when the header is missing or malformed."""
    if not header:
        return None
    parts: dict[str, bytes] = {}
    for part in header.split(","):
        pieces = part.split(None, 1)
        if not pieces:
            continue
        scheme = pieces[0].lower()
        if len(pieces) != 2 or scheme not in ("user", "organization", "element") or scheme in parts:
            return None
        # headers are decoded as latin-1 (http11.py): get the bytes the client sent back.
        parts[scheme] = pieces[1].strip().encode("latin-1", "replace")
    return parts


def organization_key(header: str | None) -> bytes:
    """Whose rate-limit bucket a request draws from: the Organization secret it presents (b"" for
    none), as a gateway in front of the API would count, before it checks the secret."""
    return (auth_parts(header) or {}).get("organization", b"")


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

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, request_id: str
    ) -> Response:
        """Answer one request (path without the query string)."""
        try:
            return self._handle(method, path, query, headers, body)
        except ApiFailure as exc:
            return error_response(exc.status, exc.message, request_id, exc.headers)

    def _handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Route, authenticate and dispatch; raises ApiFailure for error answers."""
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            raise ApiFailure(404, f"No resource found at {path}")
        if not self._authorized(headers.get("Authorization")):
            raise ApiFailure(401, AUTH_MESSAGE)
        rest = path[len(BASE_PATH) :].strip("/")
        segments = [unquote(s) for s in rest.split("/")] if rest else []
        route = self._resolve(segments)
        if route is None:
            raise ApiFailure(404, f"No resource found at {path}")
        methods, args = route
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            raise ApiFailure(405, f"Method {method} is not allowed on {path} (allowed: {allowed})", {"Allow": allowed})
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
        parts = auth_parts(header)
        if parts is None:
            return False
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
        return {
            "GET": self._get_instance,
            "PUT": self._put_instance,
            "PATCH": self._patch_instance,
            "DELETE": self._delete_instance,
        }

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
        """GET /elements/{keyOrId}/configuration: the definitions alone, spelled as the platform's
        Swagger spells them (``mandatory``, ``configDataType``), with the provider data."""
        return Response(200, self._element(key_or_id).configuration_document())

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
        return self.catalog.find(row.element_key) or Element({"id": 0, "key": row.element_key, "name": row.element_key})

    def render(self, row: InstanceRow, hydrate: bool = True) -> dict:
        """The instance object of responses."""
        element = self._element_of(row)
        reported = self.catalog.find(row.reported_key) or element
        events = element.effective(row.configuration, "event.notification.enabled")
        obj = {
            "id": row.id,
            "name": row.name,
            "createdDate": row.created_date,
            "updatedDate": row.updated_date,
            "token": row.token,
            "element": reported.public,
            "elementId": reported.id,
            "tags": row.tags,
            "provisionInteractions": [],
            "valid": True,
            "disabled": False,
            "maxCacheSize": 0,
            "cacheTimeToLive": 0,
        }
        if hydrate:
            obj["configuration"] = element.render_configuration(row.configuration)
        obj.update(
            {
                "eventsEnabled": str(events).lower() == "true",
                "traceLoggingEnabled": False,
                "cachingEnabled": False,
                "externalAuthentication": "none",
                "user": USER,
            }
        )
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
        query = ListQuery(
            element.key if element else None,
            tags,
            search,
            decode_page_token(_last(q, "nextPage")),
            min(page_size, MAX_PAGE_SIZE),
        )
        rows, total, more = self.store.list_rows(query)
        if not rows:
            raise ApiFailure(404, "No instances found")
        hydrate = (_last(q, "hydrate") or "true").lower() != "false"
        headers = {"elements-total-count": str(total), "elements-returned-count": str(len(rows))}
        if more:
            headers["elements-next-page-token"] = encode_page_token(rows[-1][0])
        return Response(200, RawJson(b"[" + b",".join(self._listed(r, hydrate) for r in rows) + b"]"), headers)

    def _listed(self, stored: tuple, hydrate: bool) -> bytes:
        """A listed instance's JSON, cached while its stored row is unchanged (then no JSON is parsed
        at all): a 200-instance page is cheap to serve, so the emulator does not hide the client's own
        cost in a benchmark."""
        cached = self._fragments.get((stored[0], hydrate))
        if cached is not None and cached[0] == stored:
            return cached[1]
        fragment = json.dumps(self.render(self.store.parse_row(stored), hydrate), separators=(",", ":")).encode()
        if len(self._fragments) > 100_000:
            self._fragments.clear()
        self._fragments[(stored[0], hydrate)] = (stored, fragment)
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

    def _update(self, text: str, scope: Element | None, change: Callable[[InstanceRow], InstanceRow]) -> Response:
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
        """DELETE /instances/{id}: 200 with an empty body; 409 while something uses the instance
        (formula instances do, on the platform; here ``EmulatorDB.mark_in_use`` says so)."""
        row = self._row(text, scope)
        users = self.store.instance_users(row.id)
        if users:
            raise ApiFailure(409, f"Element instance {row.id} is in use by {', '.join(users)} and cannot be deleted")
        if not self.store.delete_instance(row.id):
            raise ApiFailure(404, f"No instance found with ID {text}")
        return Response(200, None)

    # -- configuration records ------------------------------------------------------------------

    def _records(self, row: InstanceRow) -> list[dict]:
        """The configuration records of an instance."""
        element = self._element_of(row)
        return [
            {"id": cid, "key": key, "propertyValue": element.shown_value(row.configuration, key)}
            for cid, key in element.config_ids(row.id, row.configuration)
        ]

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

SERVER_NAME = "CloudElementsEmulator/1.0"
LISTEN_BACKLOG = 128
_API_PREFIX = BASE_PATH + "/"
_READ_CHUNK = 1 << 16  # bytes taken from a socket per read
_READ_PAUSE_BYTES = 1 << 20  # stop reading a client that keeps sending while its request waits
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0}: close() sends a TCP RST
_ENCODER = json.JSONEncoder(separators=(",", ":"))
GZIP_MIN_BYTES = 1024  # bodies larger than this are compressed for a client that accepts gzip
GZIP_LEVEL = 1  # zlib's fastest: ~0.8 ms for a 200-instance page (~380 KB), which shrinks ~30 times
_DROPPED = ("reset", "lost")  # faults that end the connection with a TCP RST instead of an answer
_BEFORE_API = ("reset", "error", "throttle")  # faults that stop a request before the API (and its rate limit)
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_FAULT_MESSAGES = {
    500: "Internal server error (injected by the emulator)",
    502: "Bad gateway (injected by the emulator)",
    503: "Service unavailable (injected by the emulator)",
}


def encode_response(
    response: Response, request_id: str, date: str, close: bool, head_only: bool, gzip_ok: bool = False
) -> bytes:
    """Status line, headers and body as one buffer, written at once (no Nagle/delayed-ACK stalls).
    A body over GZIP_MIN_BYTES goes gzip-compressed to a client that accepts it, as a web server in
    front of the API would send it (a HEAD answer gets the same headers, Content-Length included)."""
    if isinstance(response.body, RawJson):
        body = bytes(response.body)
    else:
        body = b"" if response.body is None else _ENCODER.encode(response.body).encode()
    head = (
        f"HTTP/1.1 {response.status} {_PHRASES[response.status]}\r\nServer: {SERVER_NAME}\r\n"
        f"Date: {date}\r\nelements-request-id: {request_id}\r\n"
    )
    if body:
        head += f"Content-Type: {_JSON_CONTENT_TYPE}\r\n"
    if len(body) > GZIP_MIN_BYTES:
        head += "Vary: Accept-Encoding\r\n"
        if gzip_ok:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            head += "Content-Encoding: gzip\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    for name, value in response.headers.items():
        head += f"{name}: {value}\r\n"
    if close:
        head += "Connection: close\r\n"
    data = (head + "\r\n").encode("latin-1")
    return data if head_only else data + body


@dataclass
class _Call:
    """One framed request on its way through faults, the Api and the log."""

    head: Head
    body: bytes
    path: str
    query: str
    request_id: str
    started: float


class _Connection(asyncio.BufferedProtocol):
    """One client connection on the event loop: frames requests (``http11``), applies faults, calls
    the Api, logs each request, answers. Requests on a connection are answered in order; one that
    must wait (latency, "slow") waits on a timer while the loop serves the other connections."""

    def __init__(self, service: _Service):
        self.service = service
        self.emulator = service.emulator
        self.store = service.store
        self.loop = service.loop
        self.reader = RequestReader(MAX_BODY_BYTES)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self._head: Head | None = None  # parsed, its body still arriving
        self._method: str | None = None  # of the request being handled, for error answers
        self._started = 0.0
        self._delayed: asyncio.TimerHandle | None = None  # a request waiting out its delay
        self._idle: asyncio.TimerHandle | None = None
        self._last_io = 0.0
        self._eof = False
        self._closing = False  # no further request is read
        self._write_paused = False
        self._read_paused = False

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's is a Transport
        self.service.connections.add(self)
        self._last_io = self.loop.time()
        self._idle = self.loop.call_later(IDLE_TIMEOUT_S, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed. A delayed request still runs when its time comes (a "slow" create
        commits although its client gave up); only its answer is lost (logged as status 0)."""
        self._closing = True
        self.service.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport receives into: the loop's scratch buffer (read at once by
        ``buffer_updated``); asyncio's default of a fresh 256 KiB bytes object per read costs more
        than the rest of a request's framing."""
        return self.service.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.buffer += self.service.scratch[:nbytes]
        self._last_io = self.loop.time()
        if self._delayed is None and not self._write_paused:
            self._serve()
        elif len(self.reader.buffer) > _READ_PAUSE_BYTES and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The client sent everything: answer what is complete, then close. Keeping the transport
        open lets a delayed answer still be written, as a blocking server would have."""
        self._eof = True
        if self._delayed is None and not self._write_paused:
            self._serve()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_io = self.loop.time()
        if self._delayed is None:
            self._serve()

    # -- serving ------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer the complete requests in the buffer, in order, until one has to wait."""
        if not self._run(self._serve_buffered):
            return
        if self._closing or self._delayed is not None or self._write_paused:
            return
        if self._eof:
            self._close()
        elif self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def _serve_buffered(self) -> None:
        while not self._closing and self._delayed is None and not self._write_paused and self._next():
            pass

    def _run(self, step: Callable[..., None], *args: Any) -> bool:
        """Run one step; an exception ends the connection as http.server's handler did: quietly for
        a stop or a socket error, with a log line and a 500 for a bug. True if the step returned."""
        try:
            step(*args)
            return True
        except BadRequest as exc:
            self._refuse(exc.status, exc.message, exc.method)
        except CloseSilently:
            self._close()
        except (StoreClosed, OSError):
            self._close()
        except Exception as exc:  # a bug: one line in the log, a 500 if still possible, no traceback
            self.emulator.log_line(f"emulator internal error: {type(exc).__name__}: {exc}")
            self._refuse(500, "Internal emulator error", self._method)
        return False

    def _next(self) -> bool:
        """Take the next request out of the buffer and answer it (or start its delay); False if it
        has not fully arrived, or the connection is to close after it."""
        head = self._head
        if head is None:
            head = self.reader.read_head()
            if head is None:
                return False
            self._head, self._method, self._started = head, head.method, time.monotonic()
            if head.expect_continue:
                self.transport.write(CONTINUE)
        try:
            body = self.reader.read_body(head)
        except BodyError as exc:
            self._head = None
            self._refuse_body(head, exc)
            return False
        if body is None:
            return False
        self._head = None
        self._dispatch(head, body)
        return True

    def _dispatch(self, head: Head, body: bytes) -> None:
        """Decide the request's fault; answer now, or on a timer after its delay."""
        path, _, query = head.target.partition("?")
        call = _Call(head, body, path, query, new_request_id(), self._started)
        if path != BASE_PATH and not path.startswith(_API_PREFIX):
            self._answer(call, NO_FAULT, None)
            return
        decider = self.emulator.decider  # one snapshot: faults may be reassigned meanwhile
        decision = decider.decide(head.method)
        delay = decision.delay_s + (decider.config.slow_ms / 1000.0 if decision.fault == "slow" else 0.0)
        if delay > 0:
            self._delayed = self.loop.call_later(delay, self._resume, call, decision, decider)
        else:
            self._answer(call, decision, decider)

    def _resume(self, call: _Call, decision: FaultDecision, decider: FaultDecider) -> None:
        """A delayed request's time has come: answer it, then go on with the buffer."""
        self._delayed = None
        self._last_io = self.loop.time()
        if self._run(self._answer, call, decision, decider):
            self._serve()

    @staticmethod
    def _rate_limited(call: _Call, decision: FaultDecision, decider: FaultDecider | None) -> FaultDecision:
        """The rate limit, checked when the request reaches the API (after its latency; not for the
        faults that stop it before): without a token, a "ratelimit" decision that answers 429."""
        limiter = decider.limiter if decider is not None else None
        if limiter is None or decision.fault in _BEFORE_API:
            return decision
        wait = limiter.take(organization_key(call.head.headers.get("Authorization")))
        if not wait:
            return decision
        return replace(decision, fault="ratelimit", status=429, retry_after=retry_after_header(wait))

    def _answer(self, call: _Call, decision: FaultDecision, decider: FaultDecider | None) -> None:
        """Apply the fault or let the Api answer, and log the request in the same transaction,
        committed before the client can see the answer; then send the answer, or drop it."""
        decision = self._rate_limited(call, decision, decider)
        fault = decision.fault
        config = decider.config if decider is not None else None
        with self.store.request():
            response = self._respond(call, decision, config)
            if fault in _DROPPED:  # "reset" (no response at all) or "lost" (processed, never sent)
                response = None
            log_id = self._record(call, 0 if response is None else response.status, fault)
        if response is None:
            self._reset()
        else:
            self._deliver(call, response, log_id, not call.head.keep_alive)

    def _respond(self, call: _Call, decision: FaultDecision, config: FaultConfig | None) -> Response | None:
        """The answer: an injected fault's, or the Api's (None for "reset": not processed at all;
        "lost" is processed, its answer never sent)."""
        if decision.fault == "reset":
            return None
        if decision.fault == "error":
            assert decision.status is not None  # the decider gives every "error" its status
            return error_response(decision.status, _FAULT_MESSAGES[decision.status], call.request_id)
        if decision.fault == "throttle":
            assert config is not None  # faults come with the decider's configuration
            retry = f"{config.retry_after:g}"
            return error_response(
                429, f"Too many requests: retry after {retry} seconds", call.request_id, {"Retry-After": retry}
            )
        if decision.fault == "ratelimit" and config is not None:
            return error_response(
                429,
                f"Rate limit exceeded: at most {config.ratelimit_rps:g} requests per second "
                f"for this organization; retry after {decision.retry_after} seconds",
                call.request_id,
                {"Retry-After": decision.retry_after},
            )
        return self.service.api.handle(
            call.head.method, call.path, call.query, call.head.headers, call.body, call.request_id
        )

    def _refuse_body(self, head: Head, error: BodyError) -> None:
        """A body that cannot be read: answered and logged like any request, then the connection
        closes (the rest of the body was never read)."""
        path, _, query = head.target.partition("?")
        call = _Call(head, b"", path, query, new_request_id(), self._started)
        response = error_response(error.status, error.message, call.request_id)
        self._deliver(call, response, self._record(call, response.status, None), True)
        self._closing = True

    def _deliver(self, call: _Call, response: Response, log_id: int | None, close: bool) -> None:
        """Send the response of a logged request; a failed send is logged as status 0."""
        if not self._send(response, call, close) and log_id is not None:
            self.store.set_request_status(log_id, 0)

    def _send(self, response: Response, call: _Call, close: bool) -> bool:
        """Write the response; False if the connection is gone or the write failed."""
        transport = self.transport
        if transport.is_closing():
            return False
        head = call.head
        transport.write(
            encode_response(
                response,
                call.request_id,
                self.service.date(),
                close,
                head.method == "HEAD",
                accepts_gzip(head.headers.get("Accept-Encoding")),
            )
        )
        if transport.is_closing():  # the write failed: the client is gone
            return False
        if close:
            self._close()
        return True

    def _record(self, call: _Call, status: int, fault: str | None) -> int | None:
        """Write the request log row and the log line."""
        duration = (time.monotonic() - call.started) * 1000.0
        emulator = self.emulator
        log_id = self.store.record_request(call.head.method, call.path, call.query, status, fault, duration)
        if emulator.log_stream is not None:
            target = f"{call.path}?{call.query}" if call.query else call.path
            emulator.log_line(
                f"{call.head.method} {target} -> {status} ({duration:.0f} ms)" + (f" [{fault}]" if fault else "")
            )
        return log_id

    # -- ending -------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str | None, method: str | None) -> None:
        """A protocol-level error (bad request line or headers, unknown method, a bug) as JSON,
        then close; not in the request log (as http.server's send_error)."""
        self._closing = True
        if not self.transport.is_closing():
            status = status if status in _PHRASES else 400
            request_id = new_request_id()
            response = error_response(status, message or _PHRASES[status], request_id)
            self.transport.write(encode_response(response, request_id, self.service.date(), True, method == "HEAD"))
        self._close()

    def _close(self) -> None:
        """Close after what was written (a FIN)."""
        self._closing = True
        self.transport.close()

    def _reset(self) -> None:
        """Close abruptly: SO_LINGER {on, 0} makes the socket's close() send a TCP RST."""
        self._closing = True
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except (OSError, AttributeError):
            pass
        self.transport.abort()

    def _check_idle(self) -> None:
        """Close a connection whose client sent nothing (or read nothing) for IDLE_TIMEOUT_S; a
        request waiting out its delay does not count as idle. Runs until the connection is lost."""
        now = self.loop.time()
        due = now + IDLE_TIMEOUT_S if self._delayed is not None else self._last_io + IDLE_TIMEOUT_S
        if due > now:
            self._idle = self.loop.call_later(due - now, self._check_idle)
        elif self.transport.get_write_buffer_size():
            self._closing = True
            self.transport.abort()  # the client does not read either: nothing to wait for
        else:
            self._close()

    def abort(self) -> None:
        """End the connection now (the emulator stops): a request still waiting is dropped."""
        self._closing = True
        for timer in (self._delayed, self._idle):
            if timer is not None:
                timer.cancel()
        self._delayed = None
        self.transport.abort()


if hasattr(selectors, "EpollSelector"):

    class _PreciseEpollSelector(selectors.EpollSelector):
        """Timers to the microsecond, through public interfaces only.

        asyncio (3.11) hands its selector the exact time to the next timer, and ``EpollSelector``
        rounds it up to a whole millisecond (epoll_wait's unit), so a 20 ms delay would end up to
        1 ms late. An epoll descriptor is itself readable when one of its events is ready (epoll(7)),
        so this waits on ``fileno()`` (documented) with select(), whose timeout is in microseconds,
        then collects the events with a zero timeout."""

        def select(self, timeout: float | None = None) -> list:
            if timeout is not None and timeout > 0:
                try:
                    select.select([self.fileno()], [], [], timeout)
                    timeout = 0
                except ValueError:  # a descriptor beyond select()'s range: plain epoll, to the millisecond
                    pass
            return super().select(timeout)


def _selector() -> selectors.BaseSelector:
    """The event loop's selector: precise timeouts where epoll is the default."""
    epoll = getattr(selectors, "EpollSelector", None)  # Linux only (typeshed's view depends on the platform)
    if epoll is not None and selectors.DefaultSelector is epoll:
        return _PreciseEpollSelector()
    return selectors.DefaultSelector()


class _Service:
    """The emulator's event loop with its listening socket and open connections. ``run`` serves
    until ``request_stop`` (from any thread) or Ctrl-C, then ends every connection."""

    def __init__(self, emulator: Emulator, listener: socket.socket):
        self.emulator = emulator
        assert emulator.store is not None and emulator.api is not None  # _bind opens them first
        self.store: Store = emulator.store
        self.api: Api = emulator.api
        self.listener = listener
        self.loop = asyncio.SelectorEventLoop(_selector())
        self.loop.set_exception_handler(self._loop_error)
        self.connections: set[_Connection] = set()
        self.scratch = memoryview(bytearray(_READ_CHUNK))  # shared: one read at a time on this loop
        self.done = threading.Event()
        self.thread_id: int | None = None
        self._stop = self.loop.create_future()
        self._server: asyncio.AbstractServer | None = None
        self._second, self._date = -1, ""

    def run(self) -> None:
        """Serve in the calling thread until stopped; always leaves the loop closed."""
        self.thread_id = threading.get_ident()
        try:
            self.loop.run_until_complete(self._main())
        finally:
            try:
                self._shutdown()
            finally:
                self.done.set()

    async def _main(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Connection(self), sock=self.listener, backlog=LISTEN_BACKLOG
        )
        await self._stop

    def request_stop(self) -> None:
        """Make ``run`` return (callable from any thread, before or while it runs)."""
        try:
            self.loop.call_soon_threadsafe(self._set_stop)
        except RuntimeError:  # the loop is closed: it has stopped already
            pass

    def _set_stop(self) -> None:
        if not self._stop.done():
            self._stop.set_result(None)

    def _shutdown(self) -> None:
        """Close the listener, end every connection (delayed requests are dropped), close the loop."""
        if self._server is not None:
            self._server.close()
        self.listener.close()
        try:
            self.loop.run_until_complete(self._end_all())
        finally:
            self.loop.close()

    async def _end_all(self) -> None:
        """Cancel what still runs (the serving task after Ctrl-C, connections being accepted), abort
        every connection, and give the aborted transports a turn to close their sockets."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's own error reports: one line in the emulator's log, never a traceback."""
        exc = context.get("exception")
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else context.get("message", "")
        self.emulator.log_line(f"emulator internal error: {detail}")

    def date(self) -> str:
        """The Date header, formatted once per second."""
        second = int(time.time())
        if second != self._second:
            self._second, self._date = second, email.utils.formatdate(second, usegmt=True)
        return self._date


def _listen(host: str, port: int, family: int) -> socket.socket:
    """A listening TCP socket (address reuse on, as socketserver did)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


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
        raise ValueError(f"the emulator only listens on loopback (127.0.0.0/8, ::1 or localhost), not {host!r}")
    return str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _masked_keys(catalog: Catalog) -> Callable[[str], frozenset[str]]:
    """The keys whose values responses mask, per element: the store keeps only their digest."""

    def keys(element_key: str) -> frozenset[str]:
        element = catalog.find(element_key)
        return frozenset(d.key for d in element.definitions if d.secret) if element else frozenset()

    return keys


class Emulator:
    """The emulator: an HTTP server on loopback with SQLite state and optional faults."""

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
        self._service: _Service | None = None
        self._thread: threading.Thread | None = None
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
        if self._service is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self._bind_host}]" if self._family == socket.AF_INET6 else self._bind_host
        return f"http://{host}:{self.port}{BASE_PATH}"

    def _bind(self) -> _Service:
        """Open the store, bind the listening socket and make the event loop (once)."""
        with self._state_lock:
            if self._stopped:
                raise RuntimeError("the emulator was stopped; create a new one")
            if self._service is not None:
                raise RuntimeError("the emulator is already running")
            self.store = Store(self.db_path, secret_keys=_masked_keys(self.catalog))
            self.api = Api(self.catalog, self.store, self._user_secret, self._organization_secret)
            listener = None
            try:
                listener = _listen(self._bind_host, self.port, self._family)
                self._service = _Service(self, listener)
            except BaseException:
                if listener is not None:
                    listener.close()
                self.store.close()
                raise
            self.port = listener.getsockname()[1]
            return self._service

    def start(self) -> str:
        """Serve in a daemon thread; return the base URL."""
        service = self._bind()
        self._thread = threading.Thread(target=service.run, name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() or Ctrl-C; returns cleanly either way. (After
        start(), it waits for the serving thread instead.)"""
        running = self._service
        service = self._bind() if running is None else None
        try:
            if service is not None:
                service.run()
            elif running is not None:
                while not running.done.wait(0.5):
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, end open connections (requests still waiting out a delay are dropped),
        close sockets and the database. Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        self.stopping.set()
        service = self._service
        if service is not None:
            service.request_stop()
            if service.thread_id != threading.get_ident():
                service.done.wait(STOP_GRACE_S)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_GRACE_S)
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Emulator:
        if self._service is None:
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
