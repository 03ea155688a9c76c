"""The rules of the Cloud Elements instance API, as the emulator applies them.

``Api.handle`` answers one request, given as (method, path, query, headers, body), with a
``Response``: routes, authentication, validation against the element catalog (``catalog.py``),
keyset paging, HTML sanitising of names and tags, masking of secrets, state in SQLite
(``store.py``). It knows nothing of sockets: ``server.py`` serves it over HTTP and injects faults.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, unquote

from .catalog import Catalog, Element
from .store import InstanceRow, ListQuery, Store

BASE_PATH = "/elements/api-v2"
MAX_PAGE_SIZE = 200  # also the default
AUTH_MESSAGE = "Invalid Organization or User secret, or invalid Element token provided."
USER = {"id": 1, "emailAddress": "emulator@localhost.invalid", "firstName": "Emulator", "lastName": "User"}
_FIXED = {"provisionInteractions": [], "maxCacheSize": 0, "cacheTimeToLive": 0, "traceLoggingEnabled": False}
_FIXED |= {"cachingEnabled": False, "externalAuthentication": "none", "user": USER}  # every instance's
_TAG_RE = re.compile(r"<[/!?]?[A-Za-z][^<>]*>|<!--.*?-->|<![^<>]*>", re.DOTALL)  # HTML markup, stripped
_NOT_AN_ELEMENT = "element must be an object with a key or an id"

# Paths under BASE_PATH, first match wins: a "*" segment is passed to the handler (named by method).
_INSTANCE = {"GET": "_get_instance", "PUT": "_put_instance", "PATCH": "_patch_instance", "DELETE": "_delete_instance"}
_ROUTES = [
    (tuple(pattern.split("/")), methods)
    for pattern, methods in (
        ("elements", {"GET": "_list_elements"}),
        ("elements/keys", {"GET": "_element_keys"}),
        ("elements/*", {"GET": "_get_element"}),
        ("elements/*/configuration", {"GET": "_element_configuration"}),
        ("elements/*/instances", {"GET": "_list_instances", "POST": "_create"}),
        ("elements/*/instances/*", _INSTANCE),
        ("instances", {"GET": "_list_instances", "POST": "_create"}),
        ("instances/count", {"GET": "_count"}),
        ("instances/*", _INSTANCE),
        ("instances/*/enabled", {"PUT": "_set_enabled", "DELETE": "_set_enabled"}),
        ("instances/*/configuration", {"GET": "_instance_configuration"}),
        ("hubs/*/ping", {"GET": "_ping"}),
        ("instances/*/configuration/*", {"GET": "_get_config_record", "PATCH": "_patch_config_record"}),
    )
]


class ApiFailure(Exception):
    """An error answer: status and message (sent as {requestId, message})."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RawJson(bytes):
    """A body already serialised (list pages assembled from cached instance fragments)."""


@dataclass
class Response:
    """What the API answers: a status, a JSON-able body (None: empty body) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def error_response(status: int, message: str, request_id: str, headers: dict | None = None) -> Response:
    """The platform's error body."""
    return Response(status, {"requestId": request_id, "message": message}, dict(headers or {}))


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


def _clean_text(text: str, what: str) -> str:
    """HTML markup stripped (tags, comments) as the platform does for names and tags; 400 for a
    string that cannot be stored as UTF-8 (a lone surrogate from a \\ud800 escape)."""
    text = _TAG_RE.sub("", text)
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
    parts: dict[str, bytes] = {}
    for pieces in (part.split(None, 1) for part in (header or "").split(",")):
        scheme = pieces[0].lower() if pieces else ""
        if pieces and (len(pieces) != 2 or scheme not in ("user", "organization", "element") or scheme in parts):
            return None
        if pieces:  # http.client decodes headers as latin-1: get the bytes the client sent back
            parts[scheme] = pieces[1].strip().encode("latin-1", "replace")
    return parts or None


def organization_key(header: str | None) -> bytes:
    """Whose rate-limit bucket a request draws from: the Organization secret it presents (b"" for
    none), as a gateway in front of the API would count, before it checks the secret."""
    return (auth_parts(header) or {}).get("organization", b"")


@dataclass
class ApiRequest:
    """One request as the handlers see it: the query parameters and the JSON body (POST, PUT, PATCH)."""

    query: dict[str, list[str]]
    json: Any = None
    method: str = "GET"
    authorization: str | None = None

    def last(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query parameter."""
        return self.query.get(name, [default])[-1]


class Api:
    """The rules of the Cloud Elements instance API, independent of HTTP plumbing; not thread-safe
    (the emulator serves one request at a time through it)."""

    def __init__(self, catalog: Catalog, store: Store, user_secret: str, organization_secret: str):
        self.catalog = catalog
        self.store = store
        self._user = user_secret.encode("utf-8")
        self._org = organization_secret.encode("utf-8")
        self._fragments: dict[tuple[int, bool], tuple[tuple, bytes]] = {}

    def handle(self, method: str, path: str, query: str, headers: Message, body: bytes, request_id: str) -> Response:
        """Answer one request (path without the query string)."""
        try:
            return self._handle(method, path, query, headers, body)
        except ApiFailure as exc:
            return error_response(exc.status, exc.message, request_id, exc.headers)

    def _handle(self, method: str, path: str, query: str, headers: Message, body: bytes) -> Response:
        """Route, authenticate and dispatch; raises ApiFailure for error answers."""
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            raise ApiFailure(404, f"No resource found at {path}")
        if not self._authorized(headers.get("Authorization")):
            raise ApiFailure(401, AUTH_MESSAGE)
        rest = path[len(BASE_PATH) :].strip("/")
        segments = [unquote(s) for s in rest.split("/")] if rest else []
        fits = lambda pattern, segment: pattern in ("*", segment)  # noqa: E731
        route = next((r for r in _ROUTES if len(r[0]) == len(segments) and all(map(fits, r[0], segments))), None)
        if route is None:
            raise ApiFailure(404, f"No resource found at {path}")
        parts, methods = route
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            raise ApiFailure(405, f"Method {method} is not allowed on {path} (allowed: {allowed})", {"Allow": allowed})
        request = ApiRequest(parse_qs(query, keep_blank_values=True), None, method, headers.get("Authorization"))
        if method in ("POST", "PUT", "PATCH") and (body or methods[method] != "_set_enabled"):
            media = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                raise ApiFailure(415, "Unsupported media type: the request body must be application/json")
            request.json = _parse_json(body)
            if not isinstance(request.json, dict):
                raise ApiFailure(400, "The request body must be a JSON object")
        args = [s for p, s in zip(parts, segments, strict=True) if p == "*"]
        return getattr(self, methods[method])(request, *args)

    def _authorized(self, header: str | None) -> bool:
        """Check ``User <x>, Organization <y>[, Element <t>]`` (any order) in constant time."""
        parts = auth_parts(header) or {}
        user_ok = hmac.compare_digest(parts.get("user", b""), self._user)
        org_ok = hmac.compare_digest(parts.get("organization", b""), self._org)
        return user_ok and org_ok and "user" in parts and "organization" in parts

    # -- elements -------------------------------------------------------------------------------

    def _element(self, key_or_id: object) -> Element:
        """The element, or ApiFailure 404."""
        element = self.catalog.find(key_or_id)
        if element is None:
            raise ApiFailure(404, f"No element found with key or id '{key_or_id}'")
        return element

    def _list_elements(self, req: ApiRequest) -> Response:  # without configuration definitions
        return Response(200, [e.public for e in self.catalog.elements])

    def _element_keys(self, req: ApiRequest) -> Response:
        return Response(200, self.catalog.keys())

    def _get_element(self, req: ApiRequest, key_or_id: str) -> Response:  # with configuration definitions
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
            raise ApiFailure(400, _NOT_AN_ELEMENT)
        return self._element(ref["key"] if ref.get("key") is not None else ref["id"])

    def _check_same_element(self, ref: object, row: InstanceRow) -> None:
        """PUT/PATCH may repeat the instance's element (its key or reported key), not change it."""
        if ref is not None and not isinstance(ref, dict):
            raise ApiFailure(400, _NOT_AN_ELEMENT)
        if not ref or (ref.get("key") is None and ref.get("id") is None):
            return
        found = self.catalog.find(ref["id"]) if ref.get("key") is None else None
        key = ref["key"] if ref.get("key") is not None else found.key if found else None
        if key not in (row.element_key, row.reported_key):
            raise ApiFailure(400, "The element of an instance cannot be changed")

    @staticmethod
    def _name(body: dict) -> str:
        """The sanitised, non-blank instance name of a body."""
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiFailure(400, "name must be a string")
        clean = _clean_text(name or "", "name")
        if not clean.strip():
            raise ApiFailure(400, "An instance name is required")
        return clean

    @staticmethod
    def _tags(value: object) -> list[str]:
        """Sanitised tags (strings, or {name} objects as old docs show)."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise ApiFailure(400, "tags must be a list of strings")
        tags = [tag["name"] if isinstance(tag, dict) and isinstance(tag.get("name"), str) else tag for tag in value]
        if not all(isinstance(tag, str) for tag in tags):
            raise ApiFailure(400, "tags must be a list of strings")
        return [_clean_text(tag, "a tag") for tag in tags]

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
        """The instance object of responses (with its configuration when ``hydrate``)."""
        element = self._element_of(row)
        reported = self.catalog.find(row.reported_key) or element
        events = element.effective(row.configuration, "event.notification.enabled")
        return {
            "id": row.id,
            "name": row.name,
            "createdDate": row.created_date,
            "updatedDate": row.updated_date,
            "token": row.token,
            "element": reported.public,
            "elementId": reported.id,
            "tags": row.tags,
            "valid": row.valid,
            "disabled": row.disabled,
            **({"configuration": element.render_configuration(row.configuration)} if hydrate else {}),
            "eventsEnabled": str(events).lower() == "true",
            **_FIXED,
        }

    # -- instances ------------------------------------------------------------------------------

    def _create(self, req: ApiRequest, *path: str) -> Response:
        """POST /instances (the element named in the body) and /elements/{keyOrId}/instances:
        validate, store, answer 200 with the instance."""
        body = req.json
        element = self._element(path[0]) if path else self._element_from_body(body)
        name = self._name(body)
        tags = self._tags(body.get("tags"))
        config = self._configuration(body.get("configuration"))
        self._validate(element, config)
        row = self.store.create_instance(name, element.key, element.reported_key, tags, config)
        return Response(200, self.render(row))

    def _list_instances(self, req: ApiRequest, *path: str) -> Response:
        """GET /instances, and /elements/{keyOrId}/instances (instances whose element or reported
        element match): keyset-paged, filtered by tags[] / searchText, 404 when empty."""
        element = self._element(path[0]) if path else None
        raw_size = req.last("pageSize")
        try:
            page_size = int(raw_size) if raw_size not in (None, "") else MAX_PAGE_SIZE
            if page_size < 1:
                raise ValueError(raw_size)
        except ValueError:
            raise ApiFailure(400, f"pageSize must be a positive integer, got '{raw_size}'") from None
        tags = tuple(dict.fromkeys(t for t in req.query.get("tags[]", []) + req.query.get("tags", []) if t))
        search = (req.last("searchText") or "").lower() or None
        after = decode_page_token(req.last("nextPage"))
        query = ListQuery(element.key if element else None, tags, search, after, min(page_size, MAX_PAGE_SIZE))
        rows, total, more = self.store.list_rows(query)
        if not rows:
            raise ApiFailure(404, "No instances found")
        hydrate = (req.last("hydrate") or "true").lower() != "false"
        headers = {"elements-total-count": str(total), "elements-returned-count": str(len(rows))}
        if more:
            headers["elements-next-page-token"] = encode_page_token(rows[-1][0])
        return Response(200, RawJson(b"[" + b",".join(self._listed(r, hydrate) for r in rows) + b"]"), headers)

    def _listed(self, stored: tuple, hydrate: bool) -> bytes:
        """A listed instance's JSON, cached while its stored row is unchanged (then no JSON is parsed
        at all): a 200-instance page takes under a millisecond instead of 8, so the emulator does not
        hide the client's own cost in a benchmark."""
        cached = self._fragments.get((stored[0], hydrate))
        if cached is not None and cached[0] == stored:
            return cached[1]
        fragment = json.dumps(self.render(self.store.parse_row(stored), hydrate), separators=(",", ":")).encode()
        if len(self._fragments) > 100_000:
            self._fragments.clear()
        self._fragments[(stored[0], hydrate)] = (stored, fragment)
        return fragment

    def _count(self, req: ApiRequest) -> Response:
        return Response(200, {"count": self.store.count_instances()})

    def _row(self, text: str, scope: Element | None = None) -> InstanceRow:
        """The stored instance (in the element scope, if any), or 404."""
        row = self.store.get_instance(self._instance_id(text))
        if row is None or not self._in_scope(row, scope):
            raise ApiFailure(404, f"No instance found with ID {text}")
        return row

    @staticmethod
    def _instance_id(text: str) -> int:  # anything but a plain integer is a 404
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ApiFailure(404, f"No instance found with ID {text}")
        return int(text)

    @staticmethod
    def _in_scope(row: InstanceRow, scope: Element | None) -> bool:  # the instance's element or reported one
        return scope is None or scope.key in (row.element_key, row.reported_key)

    def _target(self, path: tuple[str, ...]) -> tuple[str, Element | None]:
        """(instance id, element scope) of /instances/{id} or /elements/{keyOrId}/instances/{id}."""
        return path[-1], self._element(path[0]) if len(path) == 2 else None

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

    def _get_instance(self, req: ApiRequest, *path: str) -> Response:
        return Response(200, self.render(self._row(*self._target(path))))

    def _put_instance(self, req: ApiRequest, *path: str) -> Response:
        """PUT /instances/{id}: replace name, tags and the whole configuration. With
        ``reAuthenticate=true`` the provider checks the credentials again: it refuses (400, and the
        instance turns ``valid: false``) the secret values ``EmulatorDB.refuse_credentials`` marked;
        any other values make it valid again. Id and token stay."""
        body, again = req.json, (req.last("reAuthenticate") or "").lower() == "true"
        refused: list[InstanceRow] = []

        def change(row: InstanceRow) -> InstanceRow:
            self._check_same_element(body.get("element"), row)
            name, tags = self._name(body), self._tags(body.get("tags"))
            config = self._configuration(body.get("configuration"))
            self._validate(self._element_of(row), config)
            new = replace(row, name=name, tags=tags, configuration=config)
            if again and row.refused and self._same_secrets(row, config):
                refused.append(row)
                raise ApiFailure(400, "Re-authentication failed: the provider refused the instance's credentials")
            return replace(new, valid=True, refused=False) if again else new

        try:
            return self._update(*self._target(path), change)
        except ApiFailure:
            if refused:  # the refusal leaves the instance invalid
                self.store.update_instance(refused[0].id, lambda row: replace(row, valid=False))
            raise

    def _same_secrets(self, row: InstanceRow, config: dict) -> bool:
        """Whether ``config`` holds the secret values the instance has (compared as sealed digests)."""
        keys = self.catalog.secret_keys(row.element_key)
        return all(row.configuration.get(k) == config.get(k) for k in keys if config.get(k) or row.configuration.get(k))

    def _set_enabled(self, req: ApiRequest, text: str) -> Response:
        """PUT /instances/{id}/enabled enables the instance, DELETE disables it (hub calls with its
        token answer 403 meanwhile)."""
        return self._update(text, None, lambda row: replace(row, disabled=req.method == "DELETE"))

    def _ping(self, req: ApiRequest, hub: str) -> Response:
        """GET /hubs/{hub}/ping with ``Element <token>``: 401 for no such token (a deleted instance),
        404 for an instance of another hub, 403 while it is disabled or its credentials are refused."""
        token = (auth_parts(req.authorization) or {}).get("element", b"").decode("latin-1")
        row = self.store.get_instance(token=token) if token else None
        if row is None:
            raise ApiFailure(401, AUTH_MESSAGE)
        element_hub = self._element_of(row).public.get("hub")
        if element_hub != hub:
            raise ApiFailure(404, f"No hub '{hub}' for element instance {row.id} (its hub is '{element_hub}')")
        if row.disabled:
            raise ApiFailure(403, f"Element instance {row.id} is disabled")
        if not row.valid:
            raise ApiFailure(403, f"The provider refused the credentials of element instance {row.id}")
        return Response(200, {"endpoint": hub, "instanceId": row.id, "status": "ok"})

    def _patch_instance(self, req: ApiRequest, *path: str) -> Response:
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

        return self._update(*self._target(path), change)

    def _delete_instance(self, req: ApiRequest, *path: str) -> Response:
        """DELETE /instances/{id}: 200 with an empty body; 409 while something uses the instance
        (formula instances do, on the platform; here ``EmulatorDB.mark_in_use`` says so)."""
        text, scope = self._target(path)
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

    @staticmethod
    def _record(records: list[dict], config_id: str) -> dict:
        """The record with that id, or 404."""
        found = next((record for record in records if str(record["id"]) == config_id), None)
        if found is None:
            raise ApiFailure(404, f"No configuration found with ID {config_id}")
        return found

    def _instance_configuration(self, req: ApiRequest, text: str) -> Response:
        return Response(200, self._records(self._row(text)))

    def _get_config_record(self, req: ApiRequest, text: str, config_id: str) -> Response:
        return Response(200, self._record(self._records(self._row(text)), config_id))

    def _patch_config_record(self, req: ApiRequest, text: str, config_id: str) -> Response:
        """PATCH /instances/{id}/configuration/{configId}: set one propertyValue."""
        if "propertyValue" not in req.json:
            raise ApiFailure(400, "propertyValue is required")
        value = to_property_value(req.json["propertyValue"])

        def change(row: InstanceRow) -> InstanceRow:
            config = {**row.configuration, self._record(self._records(row), config_id)["key"]: value}
            self._validate(self._element_of(row), config)
            return replace(row, configuration=config)

        self._update(text, None, change)
        return Response(200, self._record(self._records(self._row(text)), config_id))


@functools.lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The packaged catalog, loaded once per process (it is immutable)."""
    return Catalog.load()
