"""Tests of the built-in Cloud Elements API emulator, over real HTTP on loopback.

Every other test of the project and every first run goes through the emulator, so these tests pin
its API rules (cloud-elements-api.md, sections 3-9), its persistence and its fault injection.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from provisioner.emulator import ENV_VAR, Emulator, EmulatorDB, FaultConfig
from provisioner.emulator.catalog import CATALOG_PATH, Catalog

USER_SECRET = "user-secret-1234"
ORG_SECRET = "org-secret-5678"
AUTH = f"User {USER_SECRET}, Organization {ORG_SECRET}"
TIMEOUT = 10
CW_REQUIRED = {
    "helpdesk.connectwise.username": "api1",
    "helpdesk.connectwise.password": "s3cret",
    "helpdesk.connectwise.server.url": "sample.connectwisedev.com",
    "helpdesk.connectwise.company": "company_f",
}
TRICKY = 'quote " backslash \\ newline \n unicode é ☃ 𝄞 template {{ 7*7 }} trailing space '
REQUEST_ID = re.compile(r"^[0-9a-f]{24}$")
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Client:
    """A requests.Session bound to the emulator's base URL and secrets."""

    def __init__(self, base: str, auth: str | None = AUTH):
        self.base = base
        self.session = requests.Session()
        if auth is not None:
            self.session.headers["Authorization"] = auth

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def emulator(tmp_path: Path, log: io.StringIO):
    emu = Emulator(tmp_path / "emulator.db", USER_SECRET, ORG_SECRET, log_stream=log)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def api(emulator: Emulator):
    client = Client(emulator.url)
    yield client
    client.close()


@pytest.fixture
def db(emulator: Emulator) -> EmulatorDB:
    return EmulatorDB(emulator.db_path)


def cw_body(name: str = "cw", tags: list | None = None, **config) -> dict:
    """A valid ConnectWise create body; ``config`` overrides/extends the required entries."""
    configuration = dict(CW_REQUIRED)
    configuration.update(config)
    return {"element": {"key": "connectwisehd"}, "name": name, "tags": tags or [], "configuration": configuration}


def create(api: Client, body: dict | None = None) -> dict:
    """Create an instance and return it (asserting 200)."""
    response = api.post("/instances", json=body or cw_body())
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: requests.Response, status: int, message: str | None = None) -> dict:
    """Check the platform's error shape: {requestId, message} and the elements-request-id header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"requestId", "message"}
    assert REQUEST_ID.match(body["requestId"])
    assert response.headers["elements-request-id"] == body["requestId"]
    if message is not None:
        assert body["message"] == message
    return body


CATALOG_KEYS = [
    "box",
    "closeio",
    "connectwisehd",
    "dynamicscrm",
    "dynamicscrmadfs",
    "freshdeskv2",
    "hubspot",
    "jira",
    "servicenow",
    "sfdc",
    "shopify",
    "zendesk",
]
SERVED_EXTENSIONS = {"x-reportedKey", "x-requiredWhen", "x-allowedValues"}


def no_private_fields(value, allowed=frozenset()) -> bool:
    """True if no dict inside ``value`` has a key starting with "x-" (other than ``allowed``)."""
    if isinstance(value, dict):
        return all((not k.startswith("x-") or k in allowed) and no_private_fields(v, allowed) for k, v in value.items())
    if isinstance(value, list):
        return all(no_private_fields(v, allowed) for v in value)
    return True


# -- elements -----------------------------------------------------------------------------------


def test_element_catalog_endpoints(api: Client):
    listing = api.get("/elements")
    assert listing.status_code == 200
    assert sorted(e["key"] for e in listing.json()) == CATALOG_KEYS
    assert all("configuration" not in e for e in listing.json())
    assert sorted(api.get("/elements/keys").json()) == CATALOG_KEYS

    by_key = api.get("/elements/connectwisehd").json()
    by_id = api.get("/elements/117").json()
    assert by_key == by_id
    assert by_key["name"] == "ConnectWise" and by_key["hub"] == "helpdesk"
    assert by_key["typeOauth"] is False and by_key["authentication"] == {}
    definitions = {d["key"]: d for d in by_key["configuration"]}
    assert definitions["helpdesk.connectwise.password"]["type"] == "PASSWORD"
    assert definitions["helpdesk.connectwise.wsdl.path"]["defaultValue"] == "/v2015_3/apis/2.0/"
    assert definitions["event.vendor.type"]["defaultValue"] == "webhook"
    assert definitions["event.vendor.type"]["internal"] is True
    assert definitions["event.poller.refresh_interval"]["defaultValue"] == "15"
    for d in by_key["configuration"]:
        assert d["defaultValue"] is None or isinstance(d["defaultValue"], str)
        assert {
            "key",
            "name",
            "description",
            "type",
            "required",
            "defaultValue",
            "hideFromConsole",
            "internal",
            "displayOrder",
            "active",
            "companyConfig",
            "resellerConfig",
            "groupControl",
        } <= set(d)
    # the platform's Swagger spells two fields differently on this endpoint (notes section 14)
    spelled = [
        {{"required": "mandatory", "type": "configDataType"}.get(k, k): v for k, v in d.items()}
        for d in by_key["configuration"]
    ]
    assert api.get("/elements/connectwisehd/configuration").json() == {"configuration": spelled, "providerData": []}

    adfs = api.get("/elements/dynamicscrmadfs").json()
    assert adfs["id"] == 361 and adfs["authentication"] == {"type": "custom"} and adfs["typeOauth"] is True
    assert api.get("/elements/dynamicscrm").json()["name"] == "Dynamics CRM Beta"
    assert adfs["x-reportedKey"] == "dynamicscrm"  # rules the emulator enforces are served (schemas pull)
    assert {d["key"]: d.get("x-requiredWhen") for d in adfs["configuration"]}["user.username"] == {
        "authentication.type": ["custom"]
    }
    for path in ("/elements", "/elements/dynamicscrmadfs", "/elements/dynamicscrm/configuration"):
        assert no_private_fields(api.get(path).json(), SERVED_EXTENSIONS)
    assert no_private_fields(api.get("/elements").json())  # the catalog listing carries none of them


def test_catalog_has_documented_elements_with_sources_and_oauth(api: Client):
    """At least ten elements, OAuth ones among them, each citing the public page it comes from."""
    raw = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    assert len(raw) >= 10 and all("devportal" in e["x-source"] for e in raw)
    oauth = sorted(e["key"] for e in api.get("/elements").json() if e["typeOauth"])
    assert {"sfdc", "zendesk", "hubspot", "box", "shopify"} <= set(oauth)
    sfdc = {d["key"]: d for d in api.get("/elements/sfdc").json()["configuration"]}
    assert sfdc["oauth.api.key"]["required"] is True and sfdc["oauth.user.refresh_token"]["internal"] is True


def test_unknown_element_is_404(api: Client):
    assert_error(api.get("/elements/nope"), 404, "No element found with key or id 'nope'")
    assert_error(api.get("/elements/999/configuration"), 404, "No element found with key or id '999'")
    assert_error(
        api.post("/instances", json={**cw_body(), "element": {"key": "nope"}}),
        404,
        "No element found with key or id 'nope'",
    )
    assert_error(api.post("/elements/nope/instances", json=cw_body()), 404)
    assert_error(api.get("/elements/nope/instances"), 404, "No element found with key or id 'nope'")


def test_packaged_catalog_is_consistent():
    catalog = Catalog.load()
    assert catalog.find(361).reported_key == "dynamicscrm"
    assert catalog.find("117").key == "connectwisehd"
    assert catalog.find(True) is None


# -- create -------------------------------------------------------------------------------------


def test_create_returns_full_instance(api: Client, db: EmulatorDB):
    response = api.post("/instances", json=cw_body("Test", tags=["team-a", "prod"]))
    assert response.status_code == 200
    assert REQUEST_ID.match(response.headers["elements-request-id"])
    inst = response.json()
    assert isinstance(inst["id"], int)
    assert inst["name"] == "Test" and inst["tags"] == ["team-a", "prod"]
    assert len(inst["token"]) == 44 and len(base64.b64decode(inst["token"])) == 32
    assert DATE.match(inst["createdDate"]) and DATE.match(inst["updatedDate"])
    assert inst["element"]["key"] == "connectwisehd" and inst["element"]["id"] == 117
    assert inst["elementId"] == 117
    assert "configuration" not in inst["element"] and no_private_fields(inst)
    assert inst["provisionInteractions"] == [] and inst["valid"] is True and inst["disabled"] is False
    assert inst["maxCacheSize"] == 0 and inst["cacheTimeToLive"] == 0
    assert inst["eventsEnabled"] is False and inst["cachingEnabled"] is False
    assert inst["traceLoggingEnabled"] is False and inst["externalAuthentication"] == "none"
    assert set(inst["user"]) == {"id", "emailAddress", "firstName", "lastName"}
    config = inst["configuration"]
    assert config["helpdesk.connectwise.password"] == "********"
    assert config["helpdesk.connectwise.username"] == "api1"
    assert config["helpdesk.connectwise.wsdl.path"] == "/v2015_3/apis/2.0/"
    assert config["event.notification.enabled"] == "false"
    assert config["filter.response.nulls"] == "true"
    assert config["event.notification.subscription.id"] is None
    assert config["event.notification.callback.url"] is None
    assert "event.vendor.type" not in config  # internal
    stored = db.instances()
    assert [s["id"] for s in stored] == [inst["id"]]
    assert stored[0]["element"] == "connectwisehd" and stored[0]["token"] == inst["token"]
    assert stored[0]["configuration"] == CW_REQUIRED


def test_create_under_element_path_by_key_and_id(api: Client):
    body = cw_body()
    del body["element"]
    by_key = api.post("/elements/connectwisehd/instances", json=body)
    by_id = api.post("/elements/117/instances", json=body)
    assert by_key.status_code == by_id.status_code == 200
    assert by_key.json()["element"]["key"] == by_id.json()["element"]["key"] == "connectwisehd"
    assert by_key.json()["id"] != by_id.json()["id"]
    assert by_key.json()["token"] != by_id.json()["token"]
    by_body_id = api.post("/instances", json={**body, "element": {"id": 117}})
    assert by_body_id.status_code == 200


def test_names_are_not_unique(api: Client):
    first, second = create(api, cw_body("same")), create(api, cw_body("same"))
    assert first["id"] < second["id"]


@pytest.mark.parametrize("name", [None, "", "   ", "<b></b>", 42])
def test_create_requires_a_name(api: Client, name):
    body = cw_body()
    if name is None:
        del body["name"]
    else:
        body["name"] = name
    assert_error(api.post("/instances", json=body), 400)


def test_create_requires_an_element(api: Client):
    body = cw_body()
    del body["element"]
    assert_error(api.post("/instances", json=body), 400)
    assert_error(api.post("/instances", json={**body, "element": "connectwisehd"}), 400)


def test_missing_required_configuration_lists_every_key(api: Client, db: EmulatorDB):
    body = cw_body()
    body["configuration"] = {
        "helpdesk.connectwise.username": "u",
        "helpdesk.connectwise.server.url": None,
        "helpdesk.connectwise.company": "",
    }
    assert_error(
        api.post("/instances", json=body),
        400,
        "Missing required configuration entries: helpdesk.connectwise.company, "
        "helpdesk.connectwise.password, helpdesk.connectwise.server.url",
    )
    assert db.instances() == []


def test_dynamics_required_keys_depend_on_authentication_type(api: Client):
    base = {"element": {"key": "dynamicscrmadfs"}, "name": "dyn"}
    assert_error(
        api.post("/instances", json={**base, "configuration": {}}),
        400,
        "Missing required configuration entries: dynamics.tenant, user.password, user.username",
    )
    assert_error(
        api.post("/instances", json={**base, "configuration": {"authentication.type": "oauth2"}}),
        400,
        "Missing required configuration entries: oauth.api.key, oauth.api.secret, "
        "oauth.callback.url, oauth.resource.url",
    )
    oauth = {
        "authentication.type": "oauth2",
        "oauth.api.key": "k",
        "oauth.api.secret": "s",
        "oauth.callback.url": "https://cb",
        "oauth.resource.url": "https://t.crm.dynamics.com",
    }
    inst = create(api, {**base, "configuration": oauth, "providerData": {"code": "abc"}})
    assert inst["configuration"]["oauth.api.secret"] == "********"
    assert inst["configuration"]["user.username"] is None
    bad = api.post("/instances", json={**base, "configuration": {**oauth, "authentication.type": "saml"}})
    assert "authentication.type" in assert_error(bad, 400)["message"]


def test_dynamicscrmadfs_is_reported_as_dynamicscrm(api: Client, db: EmulatorDB):
    seed_body = {
        "element": {"key": "dynamicscrmadfs"},
        "name": "Test",
        "tags": ["t"],
        "configuration": {
            "user.username": "me",
            "user.password": "pw",
            "dynamics.tenant": "yourcompanyname.crm.dynamics.com",
            "document.tagging": False,
        },
    }
    inst = create(api, seed_body)
    assert inst["element"]["key"] == "dynamicscrm" and inst["element"]["id"] == 124
    assert inst["element"]["name"] == "Dynamics CRM Beta" and inst["elementId"] == 124
    assert inst["element"]["authentication"] == {"type": "custom"} and inst["element"]["hub"] == "crm"
    assert inst["configuration"]["authentication.type"] == "custom"
    assert inst["configuration"]["document.tagging"] == "false"
    assert inst["configuration"]["user.password"] == "********"
    assert db.instances()[0]["element"] == "dynamicscrmadfs"
    legacy = create(api, {**seed_body, "element": {"key": "dynamicscrm"}, "name": "legacy"})
    assert legacy["element"]["key"] == "dynamicscrm"
    assert {i["id"] for i in api.get("/elements/dynamicscrm/instances").json()} == {inst["id"], legacy["id"]}
    assert [i["id"] for i in api.get("/elements/dynamicscrmadfs/instances").json()] == [inst["id"]]
    assert [i["id"] for i in api.get("/elements/361/instances").json()] == [inst["id"]]
    assert_error(api.get("/elements/connectwisehd/instances"), 404, "No instances found")


def test_values_are_stored_byte_for_byte_and_secrets_masked(api: Client, db: EmulatorDB):
    body = cw_body(
        **{
            "helpdesk.connectwise.password": TRICKY,
            "helpdesk.connectwise.username": TRICKY,
            "event.notification.enabled": True,
            "event.poller.refresh_interval": 30,
            "ratio": 1.5,
            "event.notification.callback.url": None,
            "event.poller.configuration": {"contacts": {"url": "/x", "ids": [1, 2]}},
            "custom.list": ["a", "é"],
            "custom.unknown": "kept",
        }
    )
    inst = create(api, body)
    config = inst["configuration"]
    assert config["helpdesk.connectwise.password"] == "********"
    assert config["helpdesk.connectwise.username"] == TRICKY
    assert config["event.notification.enabled"] == "true" and inst["eventsEnabled"] is True
    assert config["event.poller.refresh_interval"] == "30"
    assert config["ratio"] == "1.5" and config["custom.unknown"] == "kept"
    assert config["event.poller.configuration"] == '{"contacts":{"url":"/x","ids":[1,2]}}'
    assert config["custom.list"] == '["a","é"]'
    assert config["event.notification.callback.url"] is None
    raw = db.instances()[0]["configuration"]
    assert raw["helpdesk.connectwise.password"] == TRICKY
    assert raw["helpdesk.connectwise.username"] == TRICKY
    assert raw["event.notification.enabled"] == "true"
    assert raw["event.notification.callback.url"] is None
    fetched = api.get(f"/instances/{inst['id']}").json()
    assert fetched["configuration"] == config
    records = {r["key"]: r for r in api.get(f"/instances/{inst['id']}/configuration").json()}
    assert records["helpdesk.connectwise.password"]["propertyValue"] == "********"
    assert records["helpdesk.connectwise.username"]["propertyValue"] == TRICKY
    listing = api.get("/instances").json()
    assert listing[0]["configuration"]["helpdesk.connectwise.username"] == TRICKY
    assert listing[0]["configuration"]["helpdesk.connectwise.password"] == "********"
    secret = api.patch(
        f"/instances/{inst['id']}", json={"configuration": {"helpdesk.connectwise.password": "pw-" + TRICKY}}
    )
    assert "pw-" not in secret.text and "pw-" not in api.get("/instances").text
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.password"] == "pw-" + TRICKY


def test_name_and_tags_are_html_sanitised(api: Client, db: EmulatorDB):
    tags = ["<script>t</script>ag", "k:v=w/x@y"]
    inst = create(api, cw_body("<b>bold</b> me@x.com: a=b /c <i>", tags=tags))
    assert inst["name"] == "bold me@x.com: a=b /c "
    assert inst["tags"] == ["tag", "k:v=w/x@y"]
    assert db.instances()[0]["name"] == "bold me@x.com: a=b /c "
    assert_error(api.post("/instances", json=cw_body(tags="notalist")), 400)


# -- get / list ---------------------------------------------------------------------------------


def test_get_instance_and_404s(api: Client):
    inst = create(api)
    assert api.get(f"/instances/{inst['id']}").json() == inst
    assert api.get(f"/elements/connectwisehd/instances/{inst['id']}").json() == inst
    assert_error(api.get("/instances/99999"), 404, "No instance found with ID 99999")
    assert_error(api.get("/instances/abc"), 404, "No instance found with ID abc")
    assert_error(api.get(f"/elements/dynamicscrm/instances/{inst['id']}"), 404)


def test_empty_list_is_404(api: Client):
    assert_error(api.get("/instances"), 404, "No instances found")
    create(api, cw_body(tags=["x"]))
    assert_error(api.get("/instances", params={"tags[]": "y"}), 404, "No instances found")
    assert_error(api.get("/instances", params={"searchText": "zzz"}), 404, "No instances found")


def test_paging_filters_and_headers_over_450_instances(api: Client):
    for i in range(450):
        tags = ["bulk", f"mod{i % 3}"] + (["special"] if i % 50 == 0 else [])
        create(api, cw_body(f"Inst-{i:03d}", tags=tags))

    first = api.get("/instances")
    assert first.status_code == 200 and len(first.json()) == 200
    assert first.headers["elements-total-count"] == "450"
    token1 = first.headers["elements-next-page-token"]
    second = api.get("/instances", params={"nextPage": token1})
    token2 = second.headers["elements-next-page-token"]
    assert len(second.json()) == 200 and token2 != token1
    third = api.get("/instances", params={"nextPage": token2})
    assert len(third.json()) == 50 and "elements-next-page-token" not in third.headers
    assert third.headers["elements-total-count"] == "450"
    ids = [i["id"] for page in (first, second, third) for i in page.json()]
    assert ids == sorted(ids) and len(set(ids)) == 450

    capped = api.get("/instances", params={"pageSize": 1000})
    assert len(capped.json()) == 200
    small = api.get("/instances", params={"pageSize": 7, "hydrate": "false"})
    assert len(small.json()) == 7 and all("configuration" not in i for i in small.json())
    assert all("token" in i for i in small.json())
    assert_error(api.get("/instances", params={"nextPage": "not-a-token!"}), 400)
    assert_error(api.get("/instances", params={"pageSize": "abc"}), 400)
    assert_error(api.get("/instances", params={"pageSize": 0}), 400)

    tagged = api.get("/instances", params=[("tags[]", "mod0"), ("tags[]", "special")])
    assert tagged.headers["elements-total-count"] == str(len(range(0, 450, 150)))
    assert all({"mod0", "special"} <= set(i["tags"]) for i in tagged.json())
    raw = api.get("/instances?tags%5B%5D=mod1&tags%5B%5D=bulk&pageSize=100")
    assert raw.headers["elements-total-count"] == "150" and len(raw.json()) == 100
    rest = api.get(
        "/instances?tags%5B%5D=mod1&tags%5B%5D=bulk&pageSize=100&nextPage=" + raw.headers["elements-next-page-token"]
    )
    assert len(rest.json()) == 50 and "elements-next-page-token" not in rest.headers

    search = api.get("/instances", params={"searchText": "inst-1"})
    assert search.headers["elements-total-count"] == "100"
    by_key = api.get("/instances", params={"searchText": "CONNECTWISE"})
    assert by_key.headers["elements-total-count"] == "450"
    scoped = api.get("/elements/connectwisehd/instances", params={"pageSize": 200, "tags[]": "special"})
    assert scoped.headers["elements-total-count"] == "9"
    assert api.get("/instances/count").json() == {"count": 450}


# -- auth and protocol errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"User {USER_SECRET}",
        f"Organization {ORG_SECRET}",
        f"User wrong, Organization {ORG_SECRET}",
        f"User {USER_SECRET}, Organization wrong",
        f"Bearer x, User {USER_SECRET}, Organization {ORG_SECRET}",
        f"User {USER_SECRET}x, Organization {ORG_SECRET}",
    ],
)
def test_wrong_or_missing_secrets_are_401(emulator: Emulator, header):
    client = Client(emulator.url, auth=header)
    try:
        for path in ("/instances", "/elements", "/instances/1"):
            assert_error(
                client.get(path), 401, "Invalid Organization or User secret, or invalid Element token provided."
            )
    finally:
        client.close()


@pytest.mark.parametrize(
    "header",
    [
        f"Organization {ORG_SECRET}, User {USER_SECRET}",
        f"User   {USER_SECRET} ,Organization\t{ORG_SECRET}  ",
        f"User {USER_SECRET}, Organization {ORG_SECRET}, Element abcdef==",
    ],
)
def test_auth_header_variants_accepted(emulator: Emulator, header):
    client = Client(emulator.url, auth=header)
    try:
        assert client.get("/elements").status_code == 200
    finally:
        client.close()


def test_protocol_errors(api: Client, emulator: Emulator):
    assert_error(api.post("/instances", data="name=x", headers={"Content-Type": "text/plain"}), 415)
    assert_error(api.post("/instances", data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(api.post("/instances", json=["a list"]), 400)
    assert_error(api.post("/instances", data=b'{"name": NaN}', headers={"Content-Type": "application/json"}), 400)
    not_allowed = api.delete("/instances")
    assert_error(not_allowed, 405)
    assert "POST" in not_allowed.headers["Allow"]
    assert_error(api.post("/instances/count", json={}), 405)
    assert_error(api.get("/nothing-here"), 404)
    assert_error(api.get("/instances/1/unknown/deeper"), 404)
    with requests.Session() as raw:
        outside = raw.get(emulator.url.replace("/elements/api-v2", "/other"), timeout=TIMEOUT)
    assert_error(outside, 404)


def test_keep_alive_and_content_length(emulator: Emulator):
    host, port = "127.0.0.1", emulator.port
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        for _ in range(3):
            conn.request("GET", "/elements/api-v2/elements/keys", headers={"Authorization": AUTH})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200 and response.version == 11
            assert int(response.headers["Content-Length"]) == len(body)
            assert response.headers.get("Connection") != "close"
        sock = conn.sock
        conn.request("GET", "/elements/api-v2/elements", headers={"Authorization": AUTH})
        conn.getresponse().read()
        assert conn.sock is sock  # same TCP connection reused
    finally:
        conn.close()


def test_chunked_upload_is_refused_with_411_logged_and_closed(api: Client, db: EmulatorDB):
    payload = json.dumps(cw_body("chunky")).encode()
    chunks = (payload[i : i + 50] for i in range(0, len(payload), 50))  # requests sends a generator chunked
    response = api.post("/instances", data=chunks, headers={"Content-Type": "application/json"})
    assert_error(response, 411, "Length Required: send the request body with a Content-Length, not chunked")
    assert response.headers["Connection"] == "close"
    assert db.instances() == [] and [(r["method"], r["status"]) for r in db.requests()] == [("POST", 411)]
    assert create(api, cw_body("framed"))["name"] == "framed"  # the session goes on, on a new connection


# -- update / delete ------------------------------------------------------------------------------


def test_put_replaces_name_tags_and_configuration(api: Client, db: EmulatorDB):
    inst = create(api, cw_body("old", tags=["a", "b"], **{"custom.key": "x"}))
    while time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) <= inst["updatedDate"]:  # one-second resolution
        time.sleep(0.01)
    new_config = dict(CW_REQUIRED, **{"helpdesk.connectwise.company": "other"})
    body = {"element": {"key": "connectwisehd"}, "name": "new", "tags": ["c"], "configuration": new_config}
    put = api.put(f"/instances/{inst['id']}", json=body)
    assert put.status_code == 200, put.text
    updated = put.json()
    assert updated["id"] == inst["id"] and updated["token"] == inst["token"]
    assert updated["createdDate"] == inst["createdDate"] and updated["updatedDate"] > inst["updatedDate"]
    assert updated["name"] == "new" and updated["tags"] == ["c"]
    assert "custom.key" not in updated["configuration"]
    assert db.instances()[0]["configuration"] == new_config
    assert api.get("/instances", params={"tags[]": "a"}).status_code == 404
    assert api.get("/instances", params={"tags[]": "c"}).status_code == 200

    no_element = dict(body)
    del no_element["element"]
    assert api.put(f"/instances/{inst['id']}", json=no_element).status_code == 200
    assert_error(
        api.put(f"/instances/{inst['id']}", json={**body, "element": {"key": "dynamicscrm"}}),
        400,
        "The element of an instance cannot be changed",
    )
    assert_error(api.put(f"/instances/{inst['id']}", json={**body, "configuration": {}}), 400)
    assert_error(api.put("/instances/4242", json=body), 404, "No instance found with ID 4242")
    assert db.instances()[0]["name"] == "new"


def test_put_accepts_the_reported_element_key(api: Client):
    body = {
        "element": {"key": "dynamicscrmadfs"},
        "name": "dyn",
        "configuration": {"user.username": "u", "user.password": "p", "dynamics.tenant": "t"},
    }
    inst = create(api, body)
    reported = {**body, "element": inst["element"], "name": "renamed"}
    response = api.put(f"/instances/{inst['id']}", json=reported)
    assert response.status_code == 200 and response.json()["name"] == "renamed"
    assert api.put(f"/elements/dynamicscrm/instances/{inst['id']}", json=body).status_code == 200


def test_patch_is_partial(api: Client, db: EmulatorDB):
    inst = create(api, cw_body("orig", tags=["a", "b"]))
    patched = api.patch(f"/instances/{inst['id']}", json={"id": 999, "name": "<em>renamed</em>"}).json()
    assert patched["id"] == inst["id"] and patched["name"] == "renamed" and patched["tags"] == ["a", "b"]
    patched = api.patch(f"/instances/{inst['id']}", json={"tags": ["z"]}).json()
    assert patched["tags"] == ["z"] and patched["name"] == "renamed"
    merge = {"configuration": {"helpdesk.connectwise.company": "c2", "new.key": True}}
    patched = api.patch(f"/instances/{inst['id']}", json=merge).json()
    assert patched["configuration"]["helpdesk.connectwise.company"] == "c2"
    assert patched["configuration"]["new.key"] == "true"
    raw = db.instances()[0]["configuration"]
    assert raw["helpdesk.connectwise.password"] == "s3cret" and raw["helpdesk.connectwise.username"] == "api1"
    assert_error(
        api.patch(f"/instances/{inst['id']}", json={"configuration": {"helpdesk.connectwise.password": ""}}),
        400,
        "Missing required configuration entries: helpdesk.connectwise.password",
    )
    assert_error(api.patch(f"/instances/{inst['id']}", json={"element": {"id": 124}}), 400)
    assert_error(api.patch(f"/instances/{inst['id']}", json={"name": ""}), 400)
    assert_error(api.patch("/instances/777", json={"name": "x"}), 404, "No instance found with ID 777")
    assert db.instances()[0]["name"] == "renamed"


def test_delete(api: Client, db: EmulatorDB):
    inst = create(api, cw_body(tags=["gone"]))
    response = api.delete(f"/instances/{inst['id']}")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["Content-Length"] == "0"
    assert REQUEST_ID.match(response.headers["elements-request-id"])
    assert_error(api.get(f"/instances/{inst['id']}"), 404)
    assert_error(api.delete(f"/instances/{inst['id']}"), 404, f"No instance found with ID {inst['id']}")
    assert_error(api.get("/instances", params={"tags[]": "gone"}), 404)
    assert db.instances() == []
    again = create(api)
    assert again["id"] > inst["id"] and again["token"] != inst["token"]


def test_configuration_records(api: Client, db: EmulatorDB):
    inst = create(api)
    records = api.get(f"/instances/{inst['id']}/configuration").json()
    assert {r["key"] for r in records} == set(inst["configuration"])
    assert all(set(r) == {"id", "key", "propertyValue"} for r in records)
    record = next(r for r in records if r["key"] == "event.notification.callback.url")
    path = f"/instances/{inst['id']}/configuration/{record['id']}"
    assert api.get(path).json() == record
    changed = api.patch(path, json={**record, "propertyValue": "https://hooks.example/x"}).json()
    assert changed == {**record, "propertyValue": "https://hooks.example/x"}
    assert db.instances()[0]["configuration"]["event.notification.callback.url"] == "https://hooks.example/x"
    assert_error(api.get(f"/instances/{inst['id']}/configuration/1"), 404)


def test_state_persists_across_restarts(tmp_path: Path):
    path = tmp_path / "persist.db"
    with Emulator(path, USER_SECRET, ORG_SECRET) as first:
        client = Client(first.url)
        try:
            inst = create(client)
        finally:
            client.close()
    with Emulator(path, USER_SECRET, ORG_SECRET) as second:
        client = Client(second.url)
        try:
            assert client.get(f"/instances/{inst['id']}").json()["token"] == inst["token"]
            assert create(client)["id"] == inst["id"] + 1
        finally:
            client.close()


def test_emulator_db_reads_from_another_process(api: Client, emulator: Emulator):
    create(api, cw_body("other-process"))
    code = (
        "import sys; from provisioner.emulator import EmulatorDB; "
        "db = EmulatorDB(sys.argv[1]); print(db.instances()[0]['name'], len(db.requests()))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code, str(emulator.db_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["other-process", "1"]


def test_request_log_and_log_stream(api: Client, db: EmulatorDB, log: io.StringIO):
    create(api, cw_body(**{"helpdesk.connectwise.password": "hunter2-secret"}))
    api.get("/instances", params={"tags[]": "x"})
    rows = db.requests()
    assert [(r["method"], r["path"], r["query"], r["status"], r["fault"]) for r in rows] == [
        ("POST", "/elements/api-v2/instances", "", 200, None),
        ("GET", "/elements/api-v2/instances", "tags%5B%5D=x", 404, None),
    ]
    assert all(r["durationMs"] >= 0 and r["ts"].endswith("Z") for r in rows)
    lines = log.getvalue().splitlines()
    assert re.match(r"^POST /elements/api-v2/instances -> 200 \(\d+ ms\)$", lines[0])
    assert lines[1].startswith("GET /elements/api-v2/instances?tags%5B%5D=x -> 404 (")
    text = log.getvalue()
    assert USER_SECRET not in text and ORG_SECRET not in text and "hunter2" not in text
    db.clear_requests()
    assert db.requests() == []


def test_loopback_only(tmp_path: Path):
    for host in ("0.0.0.0", "10.1.2.3", "example.com", "::"):
        with pytest.raises(ValueError, match="the emulator only listens on loopback"):
            Emulator(tmp_path / "x.db", USER_SECRET, ORG_SECRET, host=host)
    with Emulator(tmp_path / "l.db", USER_SECRET, ORG_SECRET, host="localhost") as emu:
        assert emu.url.startswith("http://127.0.0.1:")
    if socket.has_ipv6:
        try:
            emu6 = Emulator(tmp_path / "6.db", USER_SECRET, ORG_SECRET, host="::1")
            emu6.start()
        except OSError:
            return  # no IPv6 loopback in this sandbox
        try:
            assert emu6.url.startswith("http://[::1]:")
            client = Client(emu6.url)
            try:
                assert client.get("/elements/keys").status_code == 200
            finally:
                client.close()
        finally:
            emu6.stop()


def test_stop_is_idempotent_and_drops_requests_on_open_connections(tmp_path: Path):
    emu = Emulator(tmp_path / "s.db", USER_SECRET, ORG_SECRET)
    emu.start()
    session = requests.Session()  # leaves a keep-alive connection open across stop()
    session.headers["Authorization"] = AUTH
    try:
        assert session.get(emu.url + "/elements/keys").status_code == 200
        emu.stop()
        emu.stop()
        with pytest.raises(requests.ConnectionError):  # the open connection answers nothing any more
            session.post(emu.url + "/instances", json=cw_body("after-stop"), timeout=TIMEOUT)
    finally:
        session.close()
    db = EmulatorDB(tmp_path / "s.db")
    assert db.instances() == [] and [r["path"] for r in db.requests()] == ["/elements/api-v2/elements/keys"]
    with pytest.raises(RuntimeError):
        emu.start()


# -- faults ---------------------------------------------------------------------------------------


def test_fault_config_parse_and_describe():
    cfg = FaultConfig.parse(
        "latency=20,jitter=5,error=0.1,throttle=0.05,retry_after=0.5,reset=0.05,"
        "lost=0.05,slow=0.02,slow_ms=1500,seed=42"
    )
    assert cfg == FaultConfig(
        latency_ms=20,
        jitter_ms=5,
        error_rate=0.1,
        throttle_rate=0.05,
        retry_after=0.5,
        reset_rate=0.05,
        lost_rate=0.05,
        slow_rate=0.02,
        slow_ms=1500,
        seed=42,
    )
    assert cfg.describe() == (
        "latency 20 ms ± 5 ms, error 10%, throttle 5% (Retry-After 0.5 s), reset 5%, "
        "lost 5%, slow 2% (1500 ms), seed 42"
    )
    assert FaultConfig.parse("") == FaultConfig() and FaultConfig().describe() == "no faults"
    assert FaultConfig.parse(" error = 10% , ").error_rate == pytest.approx(0.1)
    assert FaultConfig.from_env({ENV_VAR: "throttle=1"}).throttle_rate == 1.0
    assert FaultConfig.from_env({}) == FaultConfig()
    merged = FaultConfig(error_rate=0.5, seed=1).merged(error_rate=0.0, latency=3, seed=None)
    assert merged == FaultConfig(latency_ms=3, seed=1)
    assert FaultConfig.__dataclass_params__.frozen


@pytest.mark.parametrize(
    "text, match",
    [
        ("bogus=1", "unknown fault setting 'bogus'"),
        ("error=1.5", "between 0 and 1"),
        ("reset=-0.1", "between 0 and 1"),
        ("latency=-3", "must not be negative"),
        ("latency=fast", "must be a number"),
        ("error=nan", "finite"),
        ("seed=1.5", "must be an integer"),
        ("error", "key=value"),
        ("error=0.1,error=0.2", "given twice"),
    ],
)
def test_fault_config_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        FaultConfig.parse(text)


def test_fault_config_env_and_merge_errors():
    with pytest.raises(ValueError, match=ENV_VAR):
        FaultConfig.from_env({ENV_VAR: "error=2"})
    with pytest.raises(ValueError, match="unknown fault setting"):
        FaultConfig().merged(nonsense=1)
    with pytest.raises(ValueError):
        FaultConfig(slow_rate=3)


def test_fault_error(api: Client, db: EmulatorDB, emulator: Emulator, capfd):
    emulator.faults = FaultConfig(error_rate=1.0)
    statuses = set()
    for _ in range(12):
        response = api.post("/instances", json=cw_body())
        assert response.status_code in (500, 502, 503)
        assert_error(response, response.status_code)
        statuses.add(response.status_code)
    assert len(statuses) > 1
    assert db.instances() == []
    assert {(r["fault"], r["status"] in (500, 502, 503)) for r in db.requests()} == {("error", True)}
    emulator.faults = FaultConfig()
    assert api.get("/elements/keys").status_code == 200
    assert capfd.readouterr().err == ""


def test_fault_throttle(api: Client, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(throttle_rate=1.0, retry_after=0.2)
    response = api.post("/instances", json=cw_body())
    assert_error(response, 429)
    assert response.headers["Retry-After"] == "0.2"
    assert db.instances() == []
    assert [(r["status"], r["fault"]) for r in db.requests()] == [(429, "throttle")]


def test_fault_reset_does_not_process(api: Client, db: EmulatorDB, emulator: Emulator, capfd):
    emulator.faults = FaultConfig(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError, match="Connection reset by peer"):  # a TCP RST, no answer
        api.post("/instances", json=cw_body())
    assert db.instances() == []
    assert [(r["status"], r["fault"]) for r in db.requests()] == [(0, "reset")]
    emulator.faults = FaultConfig()
    assert api.get("/elements/keys").status_code == 200  # the server is fine afterwards
    assert capfd.readouterr().err == ""


def test_fault_lost_commits_but_never_answers(api: Client, db: EmulatorDB, emulator: Emulator, capfd):
    emulator.faults = FaultConfig(lost_rate=1.0)
    with pytest.raises(requests.ConnectionError, match="Connection reset by peer"):
        api.post("/instances", json=cw_body("lost-one"))
    assert [i["name"] for i in db.instances()] == ["lost-one"]
    assert [(r["status"], r["fault"]) for r in db.requests()] == [(0, "lost")]
    emulator.faults = FaultConfig()
    assert api.get("/instances").json()[0]["name"] == "lost-one"
    assert capfd.readouterr().err == ""


def test_fault_slow_processes_after_the_delay(api: Client, db: EmulatorDB, emulator: Emulator, capfd):
    emulator.faults = FaultConfig(slow_rate=1.0, slow_ms=300)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        api.post("/instances", json=cw_body("impatient"), timeout=0.1)
    assert db.instances() == []  # the client gave up before the commit
    deadline = time.monotonic() + 5
    while not db.instances() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [i["name"] for i in db.instances()] == ["impatient"]
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    patient = api.post("/instances", json=cw_body("patient"))
    assert patient.status_code == 200 and time.monotonic() - started >= 0.3
    assert {r["fault"] for r in db.requests()} == {"slow"}
    assert capfd.readouterr().err == ""


def test_latency_is_added(api: Client, emulator: Emulator):
    emulator.faults = FaultConfig(latency_ms=60)
    started = time.monotonic()
    assert api.get("/elements/keys").status_code == 200
    assert time.monotonic() - started >= 0.06


def test_faults_only_on_api_paths(emulator: Emulator, db: EmulatorDB):
    emulator.faults = FaultConfig(error_rate=1.0)
    with requests.Session() as session:
        response = session.get(emulator.url.replace("/elements/api-v2", "/favicon.ico"), timeout=TIMEOUT)
    assert_error(response, 404)
    assert db.requests()[0]["fault"] is None


def test_fault_first_match_order(api: Client, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(error_rate=1.0, throttle_rate=1.0, slow_rate=1.0, slow_ms=5000)
    assert api.get("/elements/keys").status_code in (500, 502, 503)
    emulator.faults = FaultConfig(throttle_rate=1.0, lost_rate=1.0)
    assert api.get("/elements/keys").status_code == 429


def test_seeded_faults_are_reproducible(api: Client, emulator: Emulator):
    config = FaultConfig(error_rate=0.3, throttle_rate=0.2, retry_after=0.01, seed=1234)

    def run() -> list[int]:
        emulator.faults = config  # assigning restarts the seeded stream
        return [api.get("/elements/keys").status_code for _ in range(40)]

    first, second = run(), run()
    assert first == second
    assert 200 in first and 429 in first and {500, 502, 503} & set(first)
    emulator.faults = FaultConfig(error_rate=0.3, throttle_rate=0.2, retry_after=0.01, seed=99)
    assert [api.get("/elements/keys").status_code for _ in range(40)] != first


def test_concurrent_clients_smoke(tmp_path: Path):
    """Not a timing assertion: 16 keep-alive clients, 512 requests with latency, all succeed."""
    faults = FaultConfig(latency_ms=2, jitter_ms=1)
    emu = Emulator(tmp_path / "load.db", USER_SECRET, ORG_SECRET, faults=faults)
    emu.start()
    failures: list[str] = []

    def worker(n: int) -> None:
        client = Client(emu.url)
        try:
            for i in range(32):
                if i % 4 == 0:
                    response = client.post("/instances", json=cw_body(f"w{n}-{i}", tags=[f"w{n}"]))
                else:
                    response = client.get("/elements/connectwisehd")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
        except requests.RequestException as exc:
            failures.append(repr(exc))
        finally:
            client.close()

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(EmulatorDB(emu.db_path).instances()) == 16 * 8
        assert len(EmulatorDB(emu.db_path).requests()) == 16 * 32
    finally:
        emu.stop()


# -- HTTP over raw sockets ------------------------------------------------------------------------


API = "/elements/api-v2"


def raw_request(
    method: str, path: str, body: bytes = b"", headers: dict | None = None, version: str = "HTTP/1.1"
) -> bytes:
    """One request's bytes, with the secrets and (for a body) Content-Type and Content-Length."""
    fields = {"Host": "localhost", "Authorization": AUTH, **(headers or {})}
    if body and "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Type", "application/json")
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


class Raw:
    """A raw TCP connection to the emulator, reading responses one by one."""

    def __init__(self, emulator: Emulator, timeout: float = TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", emulator.port), timeout=timeout)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, head: bool = False) -> tuple[int, dict, bytes]:
        """(status, headers with lower-case names, body); ConnectionError if the server closed."""
        line = self.stream.readline()
        if not line:
            raise ConnectionError("closed by the emulator")
        status = int(line.split()[1])
        headers = {}
        while (field_line := self.stream.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = field_line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b"" if head else self.stream.read(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed_by_server(self) -> bool:
        """True if the server closed the connection (EOF) with nothing more to read."""
        return self.stream.read(1) == b""

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def raw(emulator: Emulator):
    connection = Raw(emulator)
    yield connection
    connection.close()


def json_error(status_headers_body: tuple[int, dict, bytes], status: int, message: str | None = None) -> dict:
    code, headers, body = status_headers_body
    assert code == status, body
    doc = json.loads(body)
    assert set(doc) == {"requestId", "message"} and headers["elements-request-id"] == doc["requestId"]
    assert headers["content-type"] == "application/json;charset=UTF-8"
    if message is not None:
        assert doc["message"] == message
    return doc


def test_pipelined_requests_are_answered_in_order(raw: Raw, db: EmulatorDB, emulator: Emulator):
    emulator.faults = FaultConfig(latency_ms=40)
    body = json.dumps(cw_body("piped")).encode()
    started = time.monotonic()
    raw.send(
        raw_request("GET", f"{API}/instances/count")
        + raw_request("POST", f"{API}/instances", body)
        + raw_request("GET", f"{API}/instances/count")
        + raw_request("HEAD", f"{API}/elements/keys")
        + raw_request("GET", f"{API}/elements/keys")
    )
    answers = [raw.response(), raw.response(), raw.response(), raw.response(head=True), raw.response()]
    assert time.monotonic() - started >= 5 * 0.04  # one at a time on a connection
    assert [a[0] for a in answers] == [200, 200, 200, 405, 200]
    assert json.loads(answers[0][2]) == {"count": 0} and json.loads(answers[2][2]) == {"count": 1}
    assert json.loads(answers[1][2])["name"] == "piped"
    assert sorted(json.loads(answers[4][2])) == CATALOG_KEYS
    assert len({a[1]["elements-request-id"] for a in answers}) == 5
    assert [(r["method"], r["status"]) for r in db.requests()] == [
        ("GET", 200),
        ("POST", 200),
        ("GET", 200),
        ("HEAD", 405),
        ("GET", 200),
    ]


def test_head_is_answered_without_a_body(raw: Raw):
    raw.send(raw_request("HEAD", f"{API}/instances"))
    status, headers, _ = raw.response(head=True)
    assert status == 405 and int(headers["content-length"]) > 0 and "GET" in headers["allow"]
    raw.send(raw_request("GET", f"{API}/elements/keys"))  # the stream is in step: no body was sent
    assert raw.response()[0] == 200


def test_bad_or_too_large_content_length_is_answered_logged_and_closes(emulator: Emulator, db: EmulatorDB):
    for length, status in (("-1", 400), ("abc", 400), (str(10 * 1024 * 1024 + 1), 413)):
        conn = Raw(emulator)
        try:
            conn.send(
                raw_request(
                    "POST", f"{API}/instances", headers={"Content-Length": length, "Content-Type": "application/json"}
                )
            )
            code, headers, _ = conn.response()
            json_error((code, headers, _), status)
            assert headers["connection"] == "close" and conn.closed_by_server()
        finally:
            conn.close()
    assert [r["status"] for r in db.requests()] == [400, 400, 413]
    assert db.instances() == []


def test_connection_close_and_http_1_0(emulator: Emulator):
    cases = [
        ({"Connection": "close"}, "HTTP/1.1", True),
        ({}, "HTTP/1.0", True),
        ({"Connection": "keep-alive"}, "HTTP/1.0", False),
        ({"Connection": "Keep-Alive"}, "HTTP/1.1", False),
    ]
    for headers, version, closes in cases:
        conn = Raw(emulator)
        try:
            conn.send(raw_request("GET", f"{API}/elements/keys", headers=headers, version=version))
            status, response_headers, _ = conn.response()
            assert status == 200
            assert (response_headers.get("connection") == "close") is closes
            if closes:
                assert conn.closed_by_server()
            else:
                conn.send(raw_request("GET", f"{API}/elements/keys"))
                assert conn.response()[0] == 200
        finally:
            conn.close()


def test_expect_100_continue(raw: Raw):
    body = json.dumps(cw_body("expecting")).encode()
    raw.send(
        raw_request(
            "POST",
            f"{API}/instances",
            headers={"Expect": "100-continue", "Content-Length": str(len(body)), "Content-Type": "application/json"},
        )
    )
    assert raw.stream.readline() == b"HTTP/1.1 100 Continue\r\n" and raw.stream.readline() == b"\r\n"
    raw.send(body)
    status, _, answer = raw.response()
    assert status == 200 and json.loads(answer)["name"] == "expecting"


def test_half_closed_client_still_gets_its_delayed_answer(raw: Raw, emulator: Emulator):
    emulator.faults = FaultConfig(latency_ms=100)
    raw.send(raw_request("GET", f"{API}/elements/keys") + raw_request("GET", f"{API}/instances/count"))
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.response()[0] == 200 and raw.response()[0] == 200
    assert raw.closed_by_server()


def test_idle_connection_is_closed(emulator: Emulator, monkeypatch):
    from provisioner.emulator import server

    monkeypatch.setattr(server.Handler, "timeout", 0.3)  # read by each new connection
    emulator.faults = FaultConfig(latency_ms=600)  # a request waiting out its delay is not idle
    busy, idle = Raw(emulator), Raw(emulator)
    try:
        started = time.monotonic()
        busy.send(raw_request("GET", f"{API}/elements/keys"))
        idle.send(b"GET /partial")
        assert idle.closed_by_server() and 0.25 <= time.monotonic() - started < 3
        assert busy.response()[0] == 200 and time.monotonic() - started >= 0.6
        assert busy.closed_by_server() and time.monotonic() - started >= 0.85  # idle again, then closed
    finally:
        busy.close()
        idle.close()


def test_delays_of_different_connections_overlap(emulator: Emulator, db: EmulatorDB):
    emulator.faults = FaultConfig(latency_ms=150)
    connections = [Raw(emulator) for _ in range(16)]
    try:
        started = time.monotonic()
        for _ in range(2):
            for conn in connections:
                conn.send(raw_request("GET", f"{API}/elements/keys"))
            assert [conn.response()[0] for conn in connections] == [200] * 16
        elapsed = time.monotonic() - started
    finally:
        for conn in connections:
            conn.close()
    assert 0.3 <= elapsed < 2.0, elapsed  # 32 requests one after another would take 4.8 s
    assert len(db.requests()) == 32


def test_answer_lost_to_a_reset_client_is_logged_as_status_0(emulator: Emulator, db: EmulatorDB):
    emulator.faults = FaultConfig(latency_ms=300)
    conn = Raw(emulator)
    conn.send(raw_request("POST", f"{API}/instances", json.dumps(cw_body("orphan")).encode()))
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST: the emulator learns at once that nobody will read the answer
    deadline = time.monotonic() + 5
    while not db.requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [i["name"] for i in db.instances()] == ["orphan"]  # processed after its delay all the same
    assert [(r["method"], r["status"]) for r in db.requests()] == [("POST", 0)]


def test_stop_drops_requests_still_waiting_out_their_delay(tmp_path: Path):
    emu = Emulator(tmp_path / "inflight.db", USER_SECRET, ORG_SECRET, faults=FaultConfig(latency_ms=3000))
    emu.start()
    outcomes: list[str] = []

    def client(n: int) -> None:
        try:
            response = requests.post(
                emu.url + "/instances", json=cw_body(f"inflight-{n}"), headers={"Authorization": AUTH}, timeout=TIMEOUT
            )
            outcomes.append(f"answered {response.status_code}")
        except requests.ConnectionError:
            outcomes.append("dropped")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all three are waiting out their 3 s delay
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 1.5
    for t in threads:
        t.join(TIMEOUT)
    assert outcomes == ["dropped"] * 3
    db = EmulatorDB(tmp_path / "inflight.db")
    assert db.instances() == [] and db.requests() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.url + "/elements/keys", timeout=1)


def test_a_bug_is_one_log_line_and_a_500(raw: Raw, emulator: Emulator, log: io.StringIO, capfd, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(emulator.api, "handle", broken)
    raw.send(raw_request("GET", f"{API}/elements/keys"))
    status, headers, body = raw.response()
    json_error((status, headers, body), 500, "Internal emulator error")
    assert headers["connection"] == "close" and raw.closed_by_server()
    assert "emulator internal error: RuntimeError: boom" in log.getvalue().splitlines()
    monkeypatch.undo()
    with requests.Session() as session:
        assert session.get(emulator.url + "/elements/keys", headers={"Authorization": AUTH}).status_code == 200
    assert capfd.readouterr().err == ""


# -- health: valid, disabled, the enabled endpoints, the hub ping, reAuthenticate (issue 19) --------------------


def ping(api: Client, hub: str, token: str | None) -> requests.Response:
    auth = AUTH + (f", Element {token}" if token is not None else "")
    return api.get(f"/hubs/{hub}/ping", headers={"Authorization": auth})


def test_enabled_endpoints_disable_and_enable_and_ping_answers_403_meanwhile(api, db):
    inst = create(api)
    assert ping(api, "helpdesk", inst["token"]).json() == {
        "endpoint": "helpdesk",
        "instanceId": inst["id"],
        "status": "ok",
    }
    disabled = api.delete(f"/instances/{inst['id']}/enabled")
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert api.get(f"/instances/{inst['id']}").json()["disabled"] is True
    assert api.get("/instances").json()[0]["disabled"] is True and db.instances()[0]["disabled"] is True
    assert_error(ping(api, "helpdesk", inst["token"]), 403, f"Element instance {inst['id']} is disabled")
    enabled = api.put(f"/instances/{inst['id']}/enabled")  # no body, no content type
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    assert ping(api, "helpdesk", inst["token"]).status_code == 200
    assert_error(api.put("/instances/999/enabled"), 404)
    assert api.get(f"/instances/{inst['id']}").json()["token"] == inst["token"]


def test_ping_checks_the_element_token_and_the_elements_hub(api):
    inst = create(api)
    assert_error(ping(api, "helpdesk", None), 401)
    assert_error(ping(api, "helpdesk", "not-a-token"), 401)
    assert_error(ping(api, "crm", inst["token"]), 404)  # connectwisehd's hub is helpdesk
    custom = {"user.username": "me", "user.password": "pw", "dynamics.tenant": "acme.crm.dynamics.com"}
    crm = create(api, {"element": {"key": "dynamicscrmadfs"}, "name": "crm", "configuration": custom})
    assert ping(api, "crm", crm["token"]).status_code == 200
    assert api.delete(f"/instances/{inst['id']}").status_code == 200
    assert_error(ping(api, "helpdesk", inst["token"]), 401)  # a deleted instance's token
    assert_error(Client(api.base, auth=f"Element {crm['token']}").get("/hubs/crm/ping"), 401)  # secrets still needed


def test_refused_credentials_make_the_instance_invalid_and_reauthenticate_fail_until_they_change(api, db):
    inst = create(api)
    assert inst["valid"] is True
    db.refuse_credentials(inst["id"])
    assert api.get(f"/instances/{inst['id']}").json()["valid"] is False
    assert_error(ping(api, "helpdesk", inst["token"]), 403)
    same = cw_body(name="renamed")
    failed = api.put(f"/instances/{inst['id']}?reAuthenticate=true", json=same)
    assert_error(failed, 400, "Re-authentication failed: the provider refused the instance's credentials")
    assert "s3cret" not in failed.text
    row = db.instances()[0]
    assert row["valid"] is False and row["name"] == "cw"  # nothing else changed
    plain = api.put(f"/instances/{inst['id']}", json=same)  # without reAuthenticate: no check, stays invalid
    assert plain.status_code == 200 and plain.json()["valid"] is False
    fixed = api.put(
        f"/instances/{inst['id']}?reAuthenticate=true", json=cw_body(**{"helpdesk.connectwise.password": "new"})
    )
    assert fixed.status_code == 200, fixed.text
    body = fixed.json()
    assert body["valid"] is True and body["id"] == inst["id"] and body["token"] == inst["token"]
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.password"] == "new"
    again = api.put(
        f"/instances/{inst['id']}?reAuthenticate=true", json=cw_body(**{"helpdesk.connectwise.password": "new"})
    )
    assert again.status_code == 200 and again.json()["valid"] is True  # the mark is gone
    with pytest.raises(KeyError):
        db.refuse_credentials(999)


def test_a_database_made_before_valid_and_disabled_gains_them(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with Emulator(path, USER_SECRET, ORG_SECRET) as emu:
        create(Client(emu.url))
    conn = sqlite3.connect(path)
    for column in ("valid", "disabled", "refused"):
        conn.execute(f"ALTER TABLE instances DROP COLUMN {column}")
    conn.commit()
    conn.close()
    with Emulator(path, USER_SECRET, ORG_SECRET) as emu:
        listed = Client(emu.url).get("/instances").json()
    assert listed[0]["valid"] is True and listed[0]["disabled"] is False
