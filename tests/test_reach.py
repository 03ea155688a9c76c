"""Reach (issue 10): stacks sharing an organization, element schemas pulled from the API, taking over
existing instances (--adopt, import), render, and one source for element definitions.

Every flow runs the real CLI against the emulator over loopback (or a scripted server where the
emulator cannot show what is asserted) and checks what the server holds and received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, base_env, load_imported, manifest_text, write
from scripted_server import Reply, ScriptedServer

from provisioner.api.schemagen import element_schema, record_field
from provisioner.manifest.elements import ElementRegistry

CW_CONFIG = {
    "helpdesk.connectwise.username": "api1",
    "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
    "helpdesk.connectwise.company": "acme",
}


def by_hand(api, name: str, password: str, element: str = "connectwisehd", tags=("by-hand",), **extra) -> dict:
    """An instance made with curl, as an organization already has them (no provisioner tag)."""
    config = {**CW_CONFIG, "helpdesk.connectwise.password": password, **extra}
    if element == "dynamicscrmadfs":
        config = {"user.username": "crm-admin", "user.password": password, "dynamics.tenant": "acme.crm.dynamics.com"}
    return api(
        "POST",
        "/instances",
        json={"name": name, "element": {"key": element}, "tags": list(tags), "configuration": config},
    )


def writes(db) -> list[tuple[str, str]]:
    return [
        (r["method"], r["path"].removeprefix("/elements/api-v2"))
        for r in db.requests()
        if r["method"] in ("POST", "PUT", "PATCH", "DELETE")
    ]


# -- 1. stacks sharing an organization --------------------------------------------------------


def test_two_stacks_with_the_same_names_apply_prune_and_destroy_without_touching_each_other(cli, db):
    staging = write(cli.cwd, "staging.yaml", manifest_text(stack="billing-staging", count=2))
    prod = write(cli.cwd, "prod.yaml", manifest_text(stack="billing-prod", count=2))
    assert cli.run("apply", prod).returncode == 0
    first = cli.run("apply", staging)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 created" in first.stdout and "conflict" not in first.stdout
    rows = db.instances()
    assert sorted(r["name"] for r in rows) == ["helpdesk-0", "helpdesk-0", "helpdesk-1", "helpdesk-1"]
    prod_rows = {r["id"]: r for r in rows if "provisioner:stack=billing-prod" in r["tags"]}
    assert len(prod_rows) == 2
    for manifest in (staging, prod):  # each stack sees only its own two instances
        assert "No changes" in cli.run("plan", manifest, "--detailed-exitcode").stdout

    write(cli.cwd, "staging.yaml", manifest_text(stack="billing-staging", count=1))
    db.clear_requests()
    pruned = cli.run("apply", staging, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    [(method, path)] = writes(db)
    staging_one = next(r for r in rows if r["name"] == "helpdesk-1" and r["id"] not in prod_rows)
    assert (method, path) == ("DELETE", f"/instances/{staging_one['id']}")

    db.clear_requests()
    destroyed = cli.run("destroy", prod, "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert sorted(writes(db)) == sorted(("DELETE", f"/instances/{i}") for i in prod_rows)
    [left] = db.instances()
    assert left["name"] == "helpdesk-0" and "provisioner:stack=billing-staging" in left["tags"]
    assert "No changes" in cli.run("plan", staging).stdout
    assert cli.run("destroy", staging, "--yes").returncode == 0
    assert db.instances() == []


def test_only_an_unmanaged_namesake_is_a_conflict_and_its_message_says_how_to_take_it_over(cli, db, api):
    theirs = by_hand(api, "helpdesk-0", "hand-pw-1")
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    plan = cli.run("plan", manifest)
    assert plan.returncode == 1
    assert f"(id {theirs['id']}) exists without the marker of stack 'tests'" in plan.stdout
    assert "run plan/apply with --adopt" in plan.stdout
    assert writes(db) == [("POST", "/instances")]  # only the hand-made create above


# -- 3. taking over what exists --------------------------------------------------------------


def test_apply_adopt_takes_over_an_unmanaged_instance_keeping_id_and_token(cli, db, api):
    theirs = by_hand(api, "helpdesk-0", "pw-0", tags=("helpdesk",), **{"helpdesk.connectwise.company": "old-co"})
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    code, plan = cli.json("plan", manifest, "--adopt")
    assert code == 0
    [change] = plan["changes"]
    assert change["action"] == "adopt" and change["id"] == theirs["id"]
    assert change["diff"] == [
        {
            "op": "change",
            "path": "configuration.helpdesk.connectwise.company",
            "old": "old-co",
            "new": "acme",
            "sensitive": False,
        }
    ]
    db.clear_requests()
    applied = cli.run("apply", manifest, "--adopt", "--outputs", "out.json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "1 adopted" in applied.stdout
    assert writes(db) == [("PATCH", f"/instances/{theirs['id']}")]
    [row] = db.instances()
    assert row["id"] == theirs["id"] and row["token"] == theirs["token"]
    assert row["configuration"]["helpdesk.connectwise.company"] == "acme"
    assert "provisioner:stack=tests" in row["tags"] and "helpdesk" in row["tags"]
    assert any(t.startswith("provisioner:fp:helpdesk.connectwise.password=") for t in row["tags"])
    outputs = json.loads((cli.cwd / "out.json").read_text())["instances"]
    assert outputs["helpdesk-0"] == {"id": theirs["id"], "element": "connectwisehd", "token": theirs["token"]}
    db.clear_requests()
    assert "Apply: no changes" in cli.run("apply", manifest).stdout
    assert writes(db) == []


def test_adopt_refuses_several_unmanaged_namesakes_unless_the_manifest_names_the_id(cli, db, api):
    older = by_hand(api, "helpdesk-0", "pw-0")
    newer = by_hand(api, "helpdesk-0", "pw-0")
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    db.clear_requests()
    refused = cli.run("apply", manifest, "--adopt")
    assert refused.returncode == 1
    assert f"2 unmanaged instances are named 'helpdesk-0' (ids {older['id']}, {newer['id']})" in refused.stdout
    assert "adopt: <id>" in refused.stdout and writes(db) == []
    text = manifest_text(count=1).replace("    tags: [helpdesk]", f"    adopt: {newer['id']}\n    tags: [helpdesk]")
    write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest, "--adopt").returncode == 0
    assert writes(db) == [("PATCH", f"/instances/{newer['id']}")]
    rows = {r["id"]: r for r in db.instances()}
    assert rows[older["id"]]["tags"] == ["by-hand"] and "provisioner:stack=tests" in rows[newer["id"]]["tags"]


def test_without_adopt_nothing_changes_from_before(cli, db, api):
    by_hand(api, "helpdesk-0", "pw-0")
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    db.clear_requests()
    assert cli.run("apply", manifest).returncode == 1  # the conflict fails the run; helpdesk-1 is created
    assert writes(db) == [("POST", "/instances")]


def test_import_then_plan_adopt_shows_no_diff_and_apply_adopt_takes_all_over(cli, db, api):
    secrets = {
        "HD_A_HELPDESK_CONNECTWISE_PASSWORD": "Canary-hd-a-7781",
        "HD_B_HELPDESK_CONNECTWISE_PASSWORD": "Canary-hd-b-9912",
        "CRM_USER_PASSWORD": "Canary-crm-5530",
        "HD_B_EVENT_NOTIFICATION_SIGNATURE_KEY": "Canary-sig-6612",
    }  # the API returns this one in clear
    poller = json.dumps({"contacts": {"url": "/hubs/helpdesk/contacts", "idField": "id"}})
    made = [
        by_hand(
            api,
            "hd-a",
            secrets["HD_A_HELPDESK_CONNECTWISE_PASSWORD"],
            tags=("team-a",),
            **{"event.poller.configuration": poller, "event.notification.enabled": "true"},
        ),
        by_hand(
            api,
            "hd-b",
            secrets["HD_B_HELPDESK_CONNECTWISE_PASSWORD"],
            tags=(),
            **{"event.notification.signature.key": secrets["HD_B_EVENT_NOTIFICATION_SIGNATURE_KEY"]},
        ),
        by_hand(api, "crm", secrets["CRM_USER_PASSWORD"], element="dynamicscrmadfs"),
    ]
    other_stack = by_hand(api, "hd-c", "pw-other", tags=("provisioner:stack=someone-else",))
    write(cli.cwd, "base.yaml", "apiVersion: provisioner/v1\nstack: ops\ninstances: []\n")
    imported = cli.run("import", "base.yaml", "--out", "imported.yaml")
    assert imported.returncode == 0, imported.stderr
    for name in secrets:
        assert name in imported.stderr
    text = (cli.cwd / "imported.yaml").read_text()
    assert not [v for v in secrets.values() if v in text + imported.stdout + imported.stderr]
    assert "{{" not in text  # what import writes holds no template: each secret is !env NAME
    document = load_imported(text)
    assert document["stack"] == "ops" and document["apiVersion"] == "provisioner/v1"
    password = document["instances"][0]["configuration"]["helpdesk.connectwise.password"]
    assert password == {"!env": "HD_A_HELPDESK_CONNECTWISE_PASSWORD"}
    assert [(i["name"], i["adopt"]) for i in document["instances"]] == [(m["name"], m["id"]) for m in made]
    assert document["instances"][0]["tags"] == ["team-a"]
    assert "hd-c" not in text and other_stack["id"] not in [i["adopt"] for i in document["instances"]]

    code, plan = cli.json("plan", "imported.yaml", "--adopt", env=secrets)
    assert code == 0
    assert [(c["action"], c["id"], c["diff"]) for c in plan["changes"]] == [("adopt", m["id"], []) for m in made]
    db.clear_requests()
    applied = cli.run("apply", "imported.yaml", "--adopt", "--outputs", "out.json", env=secrets)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(writes(db)) == sorted(("PATCH", f"/instances/{m['id']}") for m in made)
    rows = {r["id"]: r for r in db.instances()}
    for m in made:
        assert rows[m["id"]]["token"] == m["token"] and "provisioner:stack=ops" in rows[m["id"]]["tags"]
    assert rows[made[0]["id"]]["configuration"]["helpdesk.connectwise.password"] == "Canary-hd-a-7781"
    assert rows[other_stack["id"]]["tags"] == ["provisioner:stack=someone-else"]
    outputs = json.loads((cli.cwd / "out.json").read_text())["instances"]
    assert {n: o["token"] for n, o in outputs.items()} == {m["name"]: m["token"] for m in made}
    db.clear_requests()
    assert "No changes" in cli.run("plan", "imported.yaml", env=secrets).stdout


def test_import_filters_by_element_and_name(cli, db, api):
    by_hand(api, "hd-a", "pw-1")
    by_hand(api, "hd-b", "pw-2")
    by_hand(api, "crm", "pw-3", element="dynamicscrmadfs")
    write(cli.cwd, "base.yaml", "apiVersion: provisioner/v1\nstack: ops\ninstances: []\n")
    proc = cli.run("import", "base.yaml", "--out", "a.yaml", "--element", "connectwisehd", "--name", "*-b")
    assert proc.returncode == 0, proc.stderr
    assert [i["name"] for i in load_imported((cli.cwd / "a.yaml").read_text())["instances"]] == ["hd-b"]


# -- 4. render ---------------------------------------------------------------------------------


def test_render_shows_every_body_offline_and_no_secret(cli, db):
    text = manifest_text(
        count=1,
        extra="""
  - name: "hd-{{ item }}"
    forEach: [a, b]
    element: connectwisehd
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{ env.CW_SECRET }}"
      helpdesk.connectwise.server.url: api-na.example.net
      helpdesk.connectwise.company: "{{ item }}"
      event.notification.signature.key: "{{ env.SIG_KEY }}"
""",
    )
    manifest = write(cli.cwd, "m.yaml", text)
    env = {"CW_SECRET": "Canary-render-4411", "SIG_KEY": "Canary-sig-0042", "CW_PASSWORD": "Canary-pw-3321"}
    db.clear_requests()
    for fmt in ("yaml", "json"):
        proc = cli.run("render", manifest, "-o", fmt, env=env)
        assert proc.returncode == 0, proc.stderr
        assert not [s for s in ("Canary-render-4411", "Canary-sig-0042", "Canary-pw-3321") if s in proc.stdout]
        data = yaml.safe_load(proc.stdout)
        bodies = [r["body"] for r in (data["requests"] if fmt == "json" else data)]
        assert [b["name"] for b in bodies] == ["helpdesk-0", "hd-a", "hd-b"]
        assert bodies[1]["configuration"]["helpdesk.connectwise.password"] == "(sensitive)"
        assert bodies[1]["configuration"]["event.notification.signature.key"] == "(sensitive)"
        assert bodies[2]["configuration"]["helpdesk.connectwise.company"] == "b"
        assert "helpdesk.connectwise.wsdl.path" not in bodies[1]["configuration"]  # apply does not send it
        defaults = (data["requests"] if fmt == "json" else data)[1]["defaults"]
        assert defaults["helpdesk.connectwise.wsdl.path"] == "/v2015_3/apis/2.0/"  # the API fills it in
        assert "provisioner:stack=tests" in bodies[1]["tags"]
    assert db.requests() == []  # nothing was sent


def test_render_needs_no_credentials(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", "render", str(manifest)],
        cwd=cli.cwd,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "name: helpdesk-0" in proc.stdout
    assert db.requests() == []


# -- 2 and 5. element schemas from the API -----------------------------------------------------


def test_shipped_schemas_are_exactly_what_schemas_pull_local_writes(cli):
    out = cli.cwd / "pulled"
    proc = cli.run("schemas", "pull", "connectwisehd", "dynamicscrmadfs", "--local", "--out", out)
    assert proc.returncode == 0, proc.stderr
    for key in ("connectwisehd", "dynamicscrmadfs"):
        assert (out / f"{key}.json").read_bytes() == (REPO / "schemas" / "elements" / f"{key}.json").read_bytes(), key
    again = cli.run("schemas", "pull", "connectwisehd", "dynamicscrmadfs", "--local", "--out", out)
    assert again.stdout.count("unchanged") == 2


def test_schemas_pull_all_from_the_api_then_validate_and_apply_with_them(cli, db):
    out = cli.cwd / "pulled"
    proc = cli.run("schemas", "pull", "--all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    keys = sorted(p.stem for p in out.glob("*.json"))
    assert len(keys) >= 10 and {"sfdc", "zendesk", "servicenow", "connectwisehd"} <= set(keys)
    paths = [r["path"].removeprefix("/elements/api-v2") for r in db.requests()]
    assert "/elements/keys" in paths and "/elements/zendesk" in paths and "/elements/zendesk/configuration" in paths
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.json")}
    assert cli.run("schemas", "pull", "--all", "--out", out).returncode == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.json")} == before

    registry = ElementRegistry.load([str(out)])
    assert registry.problems == []
    sfdc = registry.get("sfdc")
    assert sfdc.oauth and {"oauth.api.key", "oauth.api.secret", "oauth.user.refresh_token"} <= sfdc.secret_keys
    zendesk = json.loads((out / "zendesk.json").read_text())
    assert "zendesk.subdomain" in zendesk["required"] and "oauth.user.token" not in zendesk["properties"]
    servicenow = json.loads((out / "servicenow.json").read_text())
    assert servicenow["properties"]["password"]["writeOnly"] is True
    assert servicenow["properties"]["servicenow.subdomain"]["maxLength"] == 128

    manifest = write(
        cli.cwd,
        "sn.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        schemas: [pulled]
        instances:
          - name: desk
            element: servicenow
            configuration:
              username: admin
              password: "{{ env.SN_PASSWORD }}"
              servicenow.subdomain: dev12345
              filter.response.nulls: "false"
        """,
    )
    env = {"SN_PASSWORD": "Canary-sn-2231"}
    assert cli.run("validate", manifest, env=env).returncode == 0
    applied = cli.run("apply", manifest, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert db.instances()[-1]["configuration"]["password"] == "Canary-sn-2231"
    assert "No changes" in cli.run("plan", manifest, env=env).stdout
    bad = write(
        cli.cwd,
        "bad.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        schemas: [pulled]
        instances:
          - name: desk
            element: servicenow
            configuration:
              username: admin
        """,
    )
    refused = cli.run("validate", bad)
    assert refused.returncode == 1
    assert "missing required keys: password, servicenow.subdomain" in refused.stderr


OAUTH_MANIFEST = """
    apiVersion: provisioner/v1
    stack: tests
    schemas: [pulled]
    instances:
      - name: crm-sf
        element: sfdc
        configuration:
          oauth.api.key: "{{ env.SF_KEY }}"
          oauth.api.secret: "{{ env.SF_SECRET }}"
          oauth.callback.url: https://app.example.com/callback
    """


def test_oauth_element_is_refused_clearly_by_validate_and_plan(cli, db):
    assert cli.run("schemas", "pull", "sfdc", "--out", "pulled").returncode == 0
    manifest = write(cli.cwd, "sf.yaml", OAUTH_MANIFEST)
    env = {"SF_KEY": "key-1234", "SF_SECRET": "Canary-sf-secret-77"}
    db.clear_requests()
    for command in ("validate", "plan"):
        proc = cli.run(command, manifest, env=env)
        assert proc.returncode == 1
        assert (
            "sf.yaml:6 instance=crm-sf element: element 'sfdc' authenticates with OAuth: a new instance needs an "
            "authorization code from a browser redirect"
        ) in proc.stderr
        assert "oauth.user.refresh_token" in proc.stderr and "apply --adopt" in proc.stderr
        assert "Canary-sf-secret-77" not in proc.stderr
    assert db.requests() == []


def test_oauth_element_with_an_existing_refresh_token_is_created_without_a_redirect(cli, db):
    assert cli.run("schemas", "pull", "sfdc", "--out", "pulled").returncode == 0
    refresh = '          oauth.user.refresh_token: "{{ env.SF_REFRESH }}"\n'
    manifest = write(cli.cwd, "sf.yaml", OAUTH_MANIFEST.rstrip(" ") + refresh)
    env = {"SF_KEY": "key-1234", "SF_SECRET": "Canary-sf-secret-77", "SF_REFRESH": "Canary-refresh-31"}
    applied = cli.run("apply", manifest, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    [row] = db.instances()
    assert row["configuration"]["oauth.user.refresh_token"] == "Canary-refresh-31"
    assert "Canary-refresh-31" not in applied.stdout + applied.stderr
    rendered = cli.run("render", manifest, "-o", "json", env=env)
    assert json.loads(rendered.stdout)["requests"][0]["body"]["externalAuthentication"] == "initial"


def test_create_body_of_an_oauth_instance_says_external_authentication_initial(tmp_path):
    """What reaches the wire, seen by a scripted server (the emulator does not log bodies)."""
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    sfdc = {"key": "sfdc", "name": "Salesforce", "typeOauth": True}
    records = [
        {"key": "oauth.api.key", "mandatory": True, "configDataType": "TEXTFIELD_128"},
        {"key": "oauth.api.secret", "mandatory": True, "configDataType": "TEXTFIELD_128"},
    ]
    (pulled / "sfdc.json").write_text(json.dumps(element_schema(sfdc, records)))
    write(
        tmp_path,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        schemas: [pulled]
        instances:
          - name: crm-sf
            element: sfdc
            configuration:
              oauth.api.key: k
              oauth.api.secret: s
              oauth.user.refresh_token: r-123
        """,
    )
    created = {"id": 7, "name": "crm-sf", "token": "tok-7", "element": {"key": "sfdc"}, "tags": [], "configuration": {}}
    listed = [{**created, "tags": ["provisioner:stack=tests"]}]
    # the final check: a count (none announced here), so the listing after it
    script = [Reply(404, body={"message": "No instances found"}), Reply(200, body=created), *[Reply(body=listed)] * 2]
    with ScriptedServer(script) as server:
        env = base_env() | {"CE_API_URL": server.base_url, "CE_USER_SECRET": "u", "CE_ORGANIZATION_SECRET": "o"}
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", "apply", "m.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        post = next(r for r in server.requests if r.method == "POST")
    body = post.json()
    assert body["externalAuthentication"] == "initial"
    assert body["configuration"]["oauth.user.refresh_token"] == "r-123"


def test_schemas_pull_reads_an_api_that_answers_differently(tmp_path):
    """Another API: keys as objects, no /configuration endpoint (the element carries its definitions),
    flags as text. The pull still gives a usable schema, and validation uses it."""
    element = {
        "key": "acme",
        "name": "Acme",
        "typeOauth": False,
        "configuration": [
            {"key": "acme.user", "name": "User", "type": "TEXTFIELD_32", "required": True},
            {"key": "acme.pw", "type": "PASSWORD", "required": "true"},
            {"key": "acme.debug", "type": "BOOLEAN", "required": False, "defaultValue": False},
        ],
    }

    def answer(received):
        if received.path == "/elements/keys":
            return Reply(200, body=[{"key": "acme"}])
        if received.path == "/elements/acme":
            return Reply(200, body=element)
        return Reply(404, body={"message": "No resource found"})

    with ScriptedServer(default=answer) as server:
        env = base_env() | {"CE_API_URL": server.base_url, "CE_USER_SECRET": "u", "CE_ORGANIZATION_SECRET": "o"}
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", "schemas", "pull", "--all", "--out", "out"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert [r.method for r in server.requests] == ["GET"] * 3
    schema = json.loads((tmp_path / "out" / "acme.json").read_text())
    assert schema["required"] == ["acme.user", "acme.pw"]
    assert schema["properties"]["acme.pw"]["writeOnly"] is True
    assert schema["properties"]["acme.debug"]["default"] is False
    write(
        tmp_path,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        schemas: [out]
        instances:
          - name: a
            element: acme
            configuration:
              acme.user: "this user name is longer than thirty-two characters"
        """,
    )
    refused = subprocess.run(
        [sys.executable, "-m", "provisioner", "validate", "m.yaml"],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "configuration.acme.user: is longer than 32 characters" in refused.stderr
    assert "missing required key: acme.pw" in refused.stderr


def test_schemas_list_prints_the_catalog_and_which_keys_are_local(cli, db):
    proc = cli.run("schemas", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "connectwisehd  (local schema)" in lines and "zendesk" in lines and "sfdc" in lines
    code, data = cli.json("schemas", "list")
    assert {"key": "dynamicscrmadfs", "localSchema": True} in data["elements"]
    assert {"key": "hubspot", "localSchema": False} in data["elements"]


def test_schemas_pull_of_an_unknown_key_is_a_clear_error(cli, db):
    proc = cli.run("schemas", "pull", "nope", "--out", "x")
    assert proc.returncode == 1
    assert "element 'nope' is not in the API's catalog" in proc.stderr and "schemas list" in proc.stderr


def test_schema_mapping_reads_both_spellings_and_maps_every_type():
    """Pure: the records of GET /elements/{key} (required/type) and of GET /elements/{key}/configuration
    (mandatory/configDataType) give the same schema."""
    records = [
        {"key": "a.name", "name": "Name", "type": "TEXTFIELD_64", "required": True},
        {"key": "a.secret", "type": "PASSWORD", "required": True},
        {"key": "a.flag", "type": "BOOLEAN", "required": False, "defaultValue": "true"},
        {"key": "a.notes", "type": "TEXTAREA", "required": False},
        {"key": "a.count", "type": "INTEGER", "required": False, "defaultValue": "100"},
        {"key": "a.hidden", "type": "TEXTFIELD_32", "hideFromConsole": True, "defaultValue": "x"},
        {"key": "oauth.user.token", "type": "TEXTFIELD_1000", "internal": True},
    ]
    other = [
        {("mandatory" if k == "required" else "configDataType" if k == "type" else k): v for k, v in r.items()}
        for r in records
    ]
    element = {"key": "acme", "name": "Acme", "typeOauth": False}
    schema = element_schema(element, records)
    assert schema == element_schema(element, other)
    assert record_field(other[0], "required") is True and record_field(other[1], "type") == "PASSWORD"
    props = schema["properties"]
    assert schema["required"] == ["a.name", "a.secret"]
    assert props["a.name"] | {} == {
        "title": "Name",
        "type": "string",
        "maxLength": 64,
        "minLength": 1,
        "x-apiType": "TEXTFIELD_64",
    }
    assert props["a.secret"]["writeOnly"] is True and props["a.flag"]["default"] is True
    assert props["a.flag"]["enum"] == [True, False, "true", "false"] and props["a.notes"]["type"] == "string"
    assert props["a.count"]["default"] == 100 and props["a.hidden"]["x-hideFromConsole"] is True
    assert "oauth.user.token" not in props and "oauth" not in schema["x-provisioner"]


@pytest.mark.parametrize("path", sorted((REPO / "schemas" / "elements").glob("*.json")), ids=lambda p: p.name)
def test_shipped_schema_is_stable_text(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


@pytest.mark.parametrize("path", sorted((REPO / "schemas" / "elements").glob("*.json")), ids=lambda p: p.name)
def test_shipped_schema_is_a_valid_json_schema(path):
    """Runs load the shipped schemas without checking them against the metaschema (18 ms a run):
    this is where they are checked. A user's schema directory is checked on every load."""
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))
    assert ElementRegistry.load().get(json.loads(path.read_text(encoding="utf-8"))["x-provisioner"]["element"])


# -- 6. values compared by meaning, end to end ----------------------------------------------


def test_poller_configuration_given_as_a_mapping_is_sent_as_json_text_and_stays_converged(cli, db):
    extra_config = (
        "      event.poller.configuration:\n        contacts:\n          url: /hubs/helpdesk/contacts\n"
        '          idField: id\n      event.poller.refresh_interval: "20"\n'
    )
    text = manifest_text(count=1).rstrip("\n") + "\n" + extra_config
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest).returncode == 0
    [row] = db.instances()
    assert json.loads(row["configuration"]["event.poller.configuration"]) == {
        "contacts": {"url": "/hubs/helpdesk/contacts", "idField": "id"}
    }
    write(cli.cwd, "m.yaml", text.replace('refresh_interval: "20"', "refresh_interval: 20"))
    db.clear_requests()
    assert "Apply: no changes" in cli.run("apply", manifest).stdout
    assert writes(db) == []


def test_readme_documents_the_new_commands():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    readme = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    for needle in (
        "## Bring an existing organization",
        "schemas pull",
        "provisioner import",
        "--adopt",
        "provisioner render",
        "## Stacks sharing an organization",
        "OAuth",
    ):
        assert needle in readme, needle
    assert os.path.exists(REPO / "CHANGELOG.md")


def test_import_reads_the_configuration_a_listing_leaves_out(tmp_path):
    """An API whose list answers omit ``configuration`` (``hydrate``): import reads each unmanaged
    instance once, and writes its configuration, never its secret."""
    config = {
        "helpdesk.connectwise.username": "hand-made",
        "helpdesk.connectwise.password": "********",
        "helpdesk.connectwise.server.url": "api-na.example.net",
        "helpdesk.connectwise.company": "acme",
    }
    listed = {
        "id": 5,
        "name": "hd-by-hand",
        "element": {"key": "connectwisehd"},
        "tags": ["team-a"],
        "token": "tok-5-Qz81",
        "createdDate": "2026-01-01T00:00:05Z",
    }

    def answer(received):
        if received.path == "/instances":
            return Reply(200, {"elements-total-count": "1"}, [listed])
        if received.path == "/instances/5":
            return Reply(200, body={**listed, "configuration": config})
        return Reply(404, body={"message": "not found"})

    write(tmp_path, "base.yaml", "apiVersion: provisioner/v1\nstack: tests\ninstances: []\n")
    with ScriptedServer(default=answer) as server:
        env = base_env() | {"CE_API_URL": server.base_url, "CE_USER_SECRET": "u-secret", "CE_ORGANIZATION_SECRET": "o"}
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", "import", "base.yaml", "--out", "m.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        paths = [r.path for r in server.requests]
    assert proc.returncode == 0, proc.stderr
    assert paths == ["/instances", "/instances/5"]
    written = load_imported((tmp_path / "m.yaml").read_text())
    [instance] = written["instances"]
    assert instance["configuration"]["helpdesk.connectwise.username"] == "hand-made"
    assert instance["configuration"]["helpdesk.connectwise.server.url"] == "api-na.example.net"
    assert "!env" in instance["configuration"]["helpdesk.connectwise.password"]
    assert "********" not in (tmp_path / "m.yaml").read_text()
