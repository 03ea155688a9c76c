"""End-to-end flows through the real CLI against the emulator over loopback.

Each test asserts on what the emulator holds and on the requests it received.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import requests
from conftest import ORG_SECRET, USER_SECRET, manifest_text, write

MARKER = "provisioner:stack=tests"


@pytest.fixture
def api(emulator):
    """Direct access to the emulator, for changes made behind the tool's back."""
    session = requests.Session()
    session.headers["Authorization"] = f"User {USER_SECRET}, Organization {ORG_SECRET}"
    yield lambda method, path, **kw: session.request(method, emulator.url + path, timeout=10, **kw)
    session.close()


def writes(db) -> list[dict]:
    return [r for r in db.requests() if r["method"] in ("POST", "PUT", "PATCH", "DELETE")]


def test_apply_creates_exactly_the_declared_instances_and_a_second_apply_writes_nothing(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=3))
    first = cli.run("apply", manifest)
    assert first.returncode == 0, first.stderr
    assert "3 created" in first.stdout
    rows = db.instances()
    assert sorted(r["name"] for r in rows) == ["helpdesk-0", "helpdesk-1", "helpdesk-2"]
    for row in rows:
        assert MARKER in row["tags"] and "helpdesk" in row["tags"]
        assert any(t.startswith("provisioner:fp:helpdesk.connectwise.password=") for t in row["tags"])
        assert row["configuration"]["helpdesk.connectwise.password"] == "pw-" + row["name"].rsplit("-", 1)[1]
    assert [r["method"] for r in writes(db)] == ["POST"] * 3
    db.clear_requests()
    second = cli.run("apply", manifest)
    assert second.returncode == 0, second.stderr
    assert writes(db) == []
    assert [r["method"] for r in db.requests()] == ["GET"]
    assert len(db.instances()) == 3


def test_plan_detailed_exitcode_is_2_with_changes_then_0(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--detailed-exitcode").returncode == 2
    assert cli.run("plan", manifest).returncode == 0
    assert db.instances() == []
    assert cli.run("apply", manifest).returncode == 0
    assert cli.run("plan", manifest, "--detailed-exitcode").returncode == 0


def test_configuration_drift_is_detected_and_repaired_with_a_full_put(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    target = next(r for r in db.instances() if r["name"] == "helpdesk-1")
    body = {
        "name": "helpdesk-1",
        "element": {"key": "connectwisehd"},
        "tags": target["tags"],
        "configuration": {
            **target["configuration"],
            "helpdesk.connectwise.password": "pw-1",  # stored sealed
            "helpdesk.connectwise.company": "someone-else",
        },
    }
    assert api("PUT", f"/instances/{target['id']}", json=body).status_code == 200
    code, plan = cli.json("plan", manifest)
    assert code == 0
    change = next(c for c in plan["changes"] if c["name"] == "helpdesk-1")
    assert change["action"] == "update"
    assert {
        "op": "change",
        "path": "configuration.helpdesk.connectwise.company",
        "old": "someone-else",
        "new": "acme",
        "sensitive": False,
    } in change["diff"]
    assert plan["summary"]["update"] == 1 and plan["summary"]["noop"] == 1
    db.clear_requests()
    assert cli.run("apply", manifest).returncode == 0
    assert [(r["method"], r["path"]) for r in writes(db)] == [("PUT", f"/elements/api-v2/instances/{target['id']}")]
    fixed = next(r for r in db.instances() if r["name"] == "helpdesk-1")
    assert fixed["configuration"]["helpdesk.connectwise.company"] == "acme"
    assert fixed["configuration"]["helpdesk.connectwise.password"] == "pw-1"
    assert MARKER in fixed["tags"] and fixed["token"] == target["token"]


def test_changed_secret_is_detected_through_its_fingerprint_and_never_shown(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest, env={"CW_PASSWORD": "first-password-1"}).returncode == 0
    proc = cli.run("plan", manifest, env={"CW_PASSWORD": "second-password-2"})
    assert proc.returncode == 0
    assert "~ configuration.helpdesk.connectwise.password: (sensitive) -> (sensitive)" in proc.stdout
    assert "first-password-1" not in proc.stdout + proc.stderr
    assert "second-password-2" not in proc.stdout + proc.stderr
    assert cli.run("apply", manifest, env={"CW_PASSWORD": "second-password-2"}).returncode == 0
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.password"] == "second-password-2"
    assert "No changes" in cli.run("plan", manifest, env={"CW_PASSWORD": "second-password-2"}).stdout


def test_tag_only_change_uses_patch_and_keeps_ownership(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("tags: [helpdesk]", "tags: [helpdesk, tier-1]"))
    db.clear_requests()
    assert cli.run("apply", manifest).returncode == 0
    assert [r["method"] for r in writes(db)] == ["PATCH"]
    tags = db.instances()[0]["tags"]
    assert "tier-1" in tags and MARKER in tags
    assert any(t.startswith("provisioner:fp:") for t in tags)


def test_instance_deleted_behind_the_back_is_created_again(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    gone = next(r for r in db.instances() if r["name"] == "helpdesk-0")  # creates run in parallel: ids in any order
    assert api("DELETE", f"/instances/{gone['id']}").status_code == 200
    code, plan = cli.json("plan", manifest)
    assert [c["action"] for c in plan["changes"]] == ["create", "noop"]
    assert cli.run("apply", manifest).returncode == 0
    assert sorted(r["name"] for r in db.instances()) == ["helpdesk-0", "helpdesk-1"]


def test_unmanaged_instance_with_a_declared_name_is_a_conflict_and_is_never_touched(cli, db, api):
    body = {
        "name": "helpdesk-0",
        "element": {"key": "connectwisehd"},
        "tags": ["theirs"],
        "configuration": {
            "helpdesk.connectwise.username": "u",
            "helpdesk.connectwise.password": "p",
            "helpdesk.connectwise.server.url": "x",
            "helpdesk.connectwise.company": "c",
        },
    }
    theirs = api("POST", "/instances", json=body).json()
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    plan = cli.run("plan", manifest, "--detailed-exitcode")
    assert plan.returncode == 1
    assert "conflict helpdesk-0" in plan.stdout
    db.clear_requests()
    proc = cli.run("apply", manifest, "--prune")
    assert proc.returncode == 1
    assert [(r["method"], r["path"]) for r in writes(db)] == [("POST", "/elements/api-v2/instances")]
    rows = {r["id"]: r for r in db.instances()}
    assert rows[theirs["id"]]["tags"] == ["theirs"]
    assert rows[theirs["id"]]["configuration"]["helpdesk.connectwise.company"] == "c"
    assert sorted(r["name"] for r in rows.values()) == ["helpdesk-0", "helpdesk-1"]


def test_prune_deletes_only_owned_undeclared_instances(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=3))
    assert cli.run("apply", manifest).returncode == 0
    other = write(cli.cwd, "other.yaml", manifest_text(stack="other", count=1).replace("helpdesk-0", "other-0"))
    assert cli.run("apply", other).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=1))
    keep = cli.run("apply", manifest)
    assert keep.returncode == 0 and "--prune" in keep.stderr
    assert len(db.instances()) == 4
    code, plan = cli.json("plan", manifest, "--prune")
    assert sorted(c["action"] for c in plan["changes"]) == ["delete", "delete", "noop"]
    assert cli.run("apply", manifest, "--prune").returncode == 0
    names = sorted((r["name"], "provisioner:stack=other" in r["tags"]) for r in db.instances())
    assert names == [("helpdesk-0", False), ("other-0", True)]


def test_prune_with_no_declared_instance_is_refused_unless_forced(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=0))
    refused = cli.run("apply", manifest, "--prune")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert len(db.instances()) == 1
    assert cli.run("apply", manifest, "--prune", "--force").returncode == 0
    assert db.instances() == []


def test_duplicates_of_a_declared_instance_are_deleted_keeping_the_oldest(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    original = db.instances()[0]
    copy = {
        "name": original["name"],
        "element": {"key": "connectwisehd"},
        "tags": original["tags"],
        "configuration": {**original["configuration"], "helpdesk.connectwise.password": "pw-0"},
    }  # stored sealed
    assert api("POST", "/instances", json=copy).status_code == 200
    plan = cli.run("plan", manifest, "--detailed-exitcode")
    assert plan.returncode == 2 and "duplicate" in plan.stderr
    assert "Plan: 0 to create, 0 to update, 0 to replace, 1 to delete" in plan.stdout
    assert cli.run("apply", manifest, "--outputs", "out.json").returncode == 0
    assert [r["id"] for r in db.instances()] == [original["id"]]
    assert json.loads((cli.cwd / "out.json").read_text())["instances"]["helpdesk-0"]["token"] == original["token"]


def test_element_change_needs_allow_replace_and_then_rotates_the_token(cli, db, tmp_path):
    manifest = write(
        cli.cwd,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        instances:
          - name: crm
            element: dynamicscrm-placeholder
            configuration: {}
    """,
    )
    cw = manifest_text(count=1).replace("helpdesk-0", "crm")
    write(cli.cwd, "m.yaml", cw)
    assert cli.run("apply", manifest).returncode == 0
    old = db.instances()[0]
    write(
        cli.cwd,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        instances:
          - name: crm
            element: dynamicscrmadfs
            configuration:
              user.username: u
              user.password: p-word
              dynamics.tenant: acme.crm.dynamics.com
    """,
    )
    refused = cli.run("apply", manifest, "--outputs", "out.json")
    assert refused.returncode == 1 and "--allow-replace" in refused.stdout + refused.stderr
    assert db.instances() == [old]
    done = cli.run("apply", manifest, "--allow-replace", "--outputs", "out.json")
    assert done.returncode == 0, done.stderr
    new = db.instances()
    assert len(new) == 1 and new[0]["element"] == "dynamicscrmadfs" and new[0]["token"] != old["token"]
    outputs = json.loads((cli.cwd / "out.json").read_text())
    assert outputs["instances"]["crm"]["token"] == new[0]["token"]


def test_outputs_file_holds_every_declared_token_with_mode_0600(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    (cli.cwd / "out").mkdir()  # a missing directory is refused, never created
    assert cli.run("apply", manifest, "--outputs", "out/tokens.json").returncode == 0
    path = cli.cwd / "out" / "tokens.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    document = json.loads(path.read_text())
    expected = {r["name"]: {"id": r["id"], "element": "connectwisehd", "token": r["token"]} for r in db.instances()}
    assert document == {"instances": expected}
    # existing instances are delivered too, and the file is replaced, never appended
    assert cli.run("apply", manifest, "--outputs", "out/tokens.json").returncode == 0
    assert json.loads(path.read_text()) == {"instances": expected}


def test_output_command_reads_tokens_from_the_api(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    tokens = {r["name"]: r["token"] for r in db.instances()}
    as_json = cli.run("output", manifest)
    assert as_json.returncode == 0
    assert {k: v["token"] for k, v in json.loads(as_json.stdout)["instances"].items()} == tokens
    one = cli.run("output", manifest, "helpdesk-1", "--format", "env")
    assert one.returncode == 0
    assert f"HELPDESK_1_TOKEN={tokens['helpdesk-1']}" in one.stdout.replace("'", "")
    assert "HELPDESK_0" not in one.stdout
    unknown = cli.run("output", manifest, "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr and unknown.stdout == ""


def test_destroy_deletes_only_what_the_stack_owns_and_needs_confirmation(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    body = {
        "name": "helpdesk-0",
        "element": {"key": "connectwisehd"},
        "configuration": {
            "helpdesk.connectwise.username": "u",
            "helpdesk.connectwise.password": "p",
            "helpdesk.connectwise.server.url": "x",
            "helpdesk.connectwise.company": "c",
        },
    }
    api("POST", "/instances", json=body)
    refused = cli.run("destroy", manifest)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert len(db.instances()) == 3
    assert cli.run("destroy", manifest, "--yes").returncode == 0
    left = db.instances()
    assert len(left) == 1 and MARKER not in left[0]["tags"]


def test_wrong_credentials_stop_the_run_naming_the_variables_not_their_values(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    proc = cli.run("apply", manifest, env={"CE_USER_SECRET": "wrong-user-secret-123"})
    assert proc.returncode == 1
    assert "CE_USER_SECRET" in proc.stderr and "CE_ORGANIZATION_SECRET" in proc.stderr
    assert "401" in proc.stderr
    assert "wrong-user-secret-123" not in proc.stdout + proc.stderr
    assert ORG_SECRET not in proc.stdout + proc.stderr
    assert writes(db) == [] and db.instances() == []


def test_missing_credential_variable_is_named_before_any_request(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    cli.env = {k: v for k, v in cli.env.items() if k != "CE_ORGANIZATION_SECRET"}
    proc = cli.run("plan", manifest)
    assert proc.returncode == 1
    assert "environment variable CE_ORGANIZATION_SECRET is not set" in proc.stderr
    assert db.requests() == []


def test_verbose_traces_every_request_without_secrets(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    proc = cli.run("apply", manifest, "-v", env={"CW_PASSWORD": "canary-pw-777"})
    assert proc.returncode == 0
    assert "HTTP GET /instances" in proc.stderr and "HTTP POST /instances -> 200" in proc.stderr
    for secret in (USER_SECRET, ORG_SECRET, "canary-pw-777", db.instances()[0]["token"]):
        assert secret not in proc.stdout + proc.stderr


def test_json_output_is_a_versioned_document_alone_on_stdout(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    code, plan = cli.json("plan", manifest)
    assert code == 0 and plan["formatVersion"] == 1 and plan["command"] == "plan"
    assert plan["summary"] == {
        "create": 2,
        "update": 0,
        "rename": 0,
        "replace": 0,
        "delete": 0,
        "noop": 0,
        "conflict": 0,
        "protected": 0,
        "adopt": 0,
        "disable": 0,
        "enable": 0,
        "reauthenticate": 0,
    }
    assert {c["action"] for c in plan["changes"]} == {"create"}
    password = next(d for d in plan["changes"][0]["diff"] if d["path"].endswith("password"))
    assert password == {
        "op": "add",
        "path": "configuration.helpdesk.connectwise.password",
        "old": None,
        "new": "(sensitive)",
        "sensitive": True,
    }
    code, applied = cli.json("apply", manifest)
    assert code == 0 and applied["ok"] is True
    assert [c["status"] for c in applied["changes"]] == ["ok", "ok"]
    assert {c["id"] for c in applied["changes"]} == {r["id"] for r in db.instances()}
    assert applied["requests"]["byMethod"]["POST"] == 2


def test_validate_makes_no_network_call(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    proc = cli.run("validate", manifest)
    assert proc.returncode == 0 and "valid (2 instances)" in proc.stdout
    assert db.requests() == []


@pytest.mark.parametrize("args", [["plan"], ["apply", "--no-such-flag"], ["nope"], ["plan", "--parallelism", "0"]])
def test_misuse_of_the_command_line_exits_1_never_2(cli, args):
    proc = cli.run(*args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_item_keys_named_like_the_loaders_own_attributes_reach_the_instance(cli, db):
    """``item.line`` is the input's key, not the line the YAML loader recorded (nor ``item.lines``); an
    attribute the input lacks is the usual undefined error, never a number of the loader's."""
    inputs = "customers:\n  - id: a\n    line: premium\n    lines: two\n    line_of: three\n"
    write(cli.cwd, "customers.yaml", inputs)
    entry = (
        "- forEach: '{{ inputs.customers }}'\n"
        "  name: 'hd-{{ item.id }}-{{ item.line }}-{{ item.lines }}-{{ item.line_of }}'\n"
        "  element: connectwisehd\n"
        "  configuration:\n"
        "    helpdesk.connectwise.username: u\n"
        "    helpdesk.connectwise.password: p\n"
        "    helpdesk.connectwise.server.url: api.example.com\n"
        "    helpdesk.connectwise.company: '{{ inputs.customers.line | default(\"none\") }}'\n"
    )
    manifest = write(cli.cwd, "m.yaml", "apiVersion: provisioner/v1\nstack: tests\ninstances:\n" + entry)
    done = cli.run("apply", manifest, "--inputs", "customers.yaml")
    assert done.returncode == 0, done.stderr
    (row,) = db.instances()
    assert row["name"] == "hd-a-premium-two-three"
    assert row["configuration"]["helpdesk.connectwise.company"] == "none"  # a list has no key "line"
    write(
        cli.cwd,
        "m.yaml",
        "apiVersion: provisioner/v1\nstack: tests\ninstances:\n" + entry.replace("line_of", "lineage"),
    )
    refused = cli.run("validate", manifest, "--inputs", "customers.yaml")
    assert refused.returncode == 1
    assert "name: key 'lineage' is not defined" in refused.stderr
    listed = entry.replace('| default("none") ', "")  # a list read from YAML: what a list has, named a list
    write(cli.cwd, "m.yaml", "apiVersion: provisioner/v1\nstack: tests\ninstances:\n" + listed)
    refused = cli.run("validate", manifest, "--inputs", "customers.yaml")
    assert refused.returncode == 1 and "list has no attribute 'line'" in refused.stderr, refused.stderr
