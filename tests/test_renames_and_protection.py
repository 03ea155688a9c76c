"""Renames keep the instance (id and token); protected instances are never deleted or replaced.

Real CLI against the emulator; assertions on the emulator's rows and request log.
"""

from __future__ import annotations

import json

import pytest
from conftest import manifest_text, write
from safety_helpers import Api, by_name, writes

PREFIX = "/elements/api-v2/instances"
PROTECT = "provisioner:protect"


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def renamed(text: str, old: str, new: str, extra: str = "") -> str:
    return text.replace(f"- name: {old}\n", f"- name: {new}\n    previousNames: [{old}]\n{extra}")


def test_rename_keeps_id_and_token_and_the_outputs_deliver_the_new_name(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    before = by_name(db)["helpdesk-1"]
    write(cli.cwd, "m.yaml", renamed(manifest_text(count=2), "helpdesk-1", "helpdesk-eu"))
    code, plan = cli.json("plan", manifest)
    assert code == 0
    change = next(c for c in plan["changes"] if c["name"] == "helpdesk-eu")
    assert change["action"] == "rename" and change["id"] == before["id"]
    assert change["diff"] == [
        {"op": "change", "path": "name", "old": "helpdesk-1", "new": "helpdesk-eu", "sensitive": False}
    ]
    assert plan["summary"]["rename"] == 1 and plan["summary"]["create"] == 0 and plan["summary"]["delete"] == 0
    db.clear_requests()
    proc = cli.run("apply", manifest, "--prune", "--outputs", "tokens.json")
    assert proc.returncode == 0, proc.stderr
    assert "1 renamed" in proc.stdout
    assert writes(db) == [("PATCH", f"{PREFIX}/{before['id']}")]
    after = by_name(db)
    assert sorted(after) == ["helpdesk-0", "helpdesk-eu"]
    assert after["helpdesk-eu"]["id"] == before["id"] and after["helpdesk-eu"]["token"] == before["token"]
    assert after["helpdesk-eu"]["configuration"] == before["configuration"]
    tokens = json.loads((cli.cwd / "tokens.json").read_text())["instances"]
    assert tokens["helpdesk-eu"] == {"id": before["id"], "element": "connectwisehd", "token": before["token"]}
    assert "helpdesk-1" not in tokens
    db.clear_requests()
    again = cli.run("plan", manifest, "--detailed-exitcode")  # fingerprints were rewritten for the new name
    assert again.returncode == 0, again.stdout
    assert writes(db) == []


def test_rename_with_a_configuration_change_is_one_put_on_the_same_instance(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    before = by_name(db)["helpdesk-0"]
    text = renamed(manifest_text(count=1), "helpdesk-0", "helpdesk-new").replace("company: acme", "company: globex")
    write(cli.cwd, "m.yaml", text)
    db.clear_requests()
    proc = cli.run("apply", manifest)
    assert proc.returncode == 0, proc.stderr
    assert writes(db) == [("PUT", f"{PREFIX}/{before['id']}")]
    after = by_name(db)["helpdesk-new"]
    assert (after["id"], after["token"]) == (before["id"], before["token"])
    assert after["configuration"]["helpdesk.connectwise.company"] == "globex"
    assert after["configuration"]["helpdesk.connectwise.password"] == "pw-0"


def test_previous_name_declared_by_another_instance_is_a_located_error(cli, db):
    text = renamed(manifest_text(count=2), "helpdesk-1", "helpdesk-eu").replace("[helpdesk-1]", "[helpdesk-0]")
    manifest = write(cli.cwd, "m.yaml", text)
    proc = cli.run("plan", manifest)
    assert proc.returncode == 1
    assert (
        "instance=helpdesk-eu previousNames: previous name 'helpdesk-0' is declared by another instance" in proc.stderr
    )
    assert db.requests() == []


def test_protected_instance_survives_prune_and_destroy_until_named(cli, db):
    text = manifest_text(count=2).replace("- name: helpdesk-1\n", "- name: helpdesk-1\n    protect: true\n")
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    assert PROTECT in rows["helpdesk-1"]["tags"] and PROTECT not in rows["helpdesk-0"]["tags"]
    write(cli.cwd, "m.yaml", manifest_text(count=1))  # its entry is gone: the marker is on the server
    code, plan = cli.json("plan", manifest, "--prune")
    assert code == 1 and plan["ok"] is False
    refused = next(c for c in plan["changes"] if c["name"] == "helpdesk-1")
    assert refused["action"] == "protected" and "--allow-destroy NAME" in refused["reason"]
    db.clear_requests()
    pruned = cli.run("apply", manifest, "--prune")
    assert pruned.returncode == 1
    protected = rows["helpdesk-1"]["id"]  # creates run in parallel: its id is 1 or 2
    assert f"# protected helpdesk-1 id {protected}, not touched: protected (provisioner:protect)" in pruned.stdout
    assert "1 protected, refused" in pruned.stdout
    assert writes(db) == [] and "helpdesk-1" in by_name(db)
    destroyed = cli.run("destroy", manifest, "--yes")
    assert destroyed.returncode == 1
    assert sorted(by_name(db)) == ["helpdesk-1"]  # helpdesk-0 deleted, the protected one kept
    db.clear_requests()
    typo = cli.run("destroy", manifest, "--yes", "--allow-destroy", "helpdesk-9")
    assert typo.returncode == 1 and "--allow-destroy helpdesk-9: no instance of this plan has that name" in typo.stderr
    allowed = cli.run("destroy", manifest, "--yes", "--allow-destroy", "helpdesk-1")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert db.instances() == [] and [m for m, _ in writes(db)] == ["DELETE"]


def test_a_markdown_apply_report_names_the_protected_refusal_and_fails(cli, db):
    text = manifest_text(count=2).replace("- name: helpdesk-1\n", "- name: helpdesk-1\n    protect: true\n")
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=1))  # helpdesk-1's entry is gone; its marker is on the server
    plan = cli.run("plan", manifest, "--prune", "-o", "markdown")
    assert plan.returncode == 1 and "No changes" not in plan.stdout and "| protected | 1 |" in plan.stdout
    pruned = cli.run("apply", manifest, "--prune", "-o", "markdown")
    assert pruned.returncode == 1
    assert pruned.stdout.startswith("### provisioner apply: stack `tests`\n\n**Failed.**"), pruned.stdout
    assert "helpdesk-1" in pruned.stdout and "protected" in pruned.stdout
    assert sorted(by_name(db)) == ["helpdesk-0", "helpdesk-1"]  # the protected one is kept


def test_protection_from_an_expression_per_environment_and_protect_false_removes_it(cli, db):
    text = manifest_text(count=1, extra="inputs:\n  environment: staging\n").replace(
        "- name: helpdesk-0\n", "- name: helpdesk-0\n    protect: \"{{ inputs.environment == 'prod' }}\"\n"
    )
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest).returncode == 0
    assert PROTECT not in db.instances()[0]["tags"]
    db.clear_requests()
    assert cli.run("apply", manifest, "--set", "environment=prod").returncode == 0
    assert writes(db) == [("PATCH", f"{PREFIX}/1")] and PROTECT in db.instances()[0]["tags"]
    assert cli.run("destroy", manifest, "--yes").returncode == 1 and len(db.instances()) == 1
    write(cli.cwd, "m.yaml", text.replace("\"{{ inputs.environment == 'prod' }}\"", "false"))
    db.clear_requests()
    assert cli.run("apply", manifest).returncode == 0
    assert writes(db) == [("PATCH", f"{PREFIX}/1")] and PROTECT not in db.instances()[0]["tags"]
    assert cli.run("destroy", manifest, "--yes").returncode == 0 and db.instances() == []


def test_a_protected_instance_is_not_replaced_even_with_allow_replace(cli, db):
    text = manifest_text(count=1).replace("- name: helpdesk-0\n", "- name: helpdesk-0\n    protect: true\n")
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("apply", manifest).returncode == 0
    crm = (
        "  - name: helpdesk-0\n    protect: true\n    element: dynamicscrmadfs\n    configuration:\n"
        "      user.username: crm\n      user.password: crm-pw-1\n      dynamics.tenant: acme.crm.dynamics.com\n"
    )
    write(cli.cwd, "m.yaml", "apiVersion: provisioner/v1\nstack: tests\ninstances:\n" + crm)
    db.clear_requests()
    proc = cli.run("apply", manifest, "--allow-replace")
    assert proc.returncode == 1
    assert "replacing it (element connectwisehd -> dynamicscrmadfs) refused" in proc.stdout
    assert writes(db) == [] and db.instances()[0]["element"] == "connectwisehd"


def test_protect_must_render_to_a_boolean(cli, db):
    text = manifest_text(count=1).replace("- name: helpdesk-0\n", "- name: helpdesk-0\n    protect: \"{{ 'yes' }}\"\n")
    manifest = write(cli.cwd, "m.yaml", text)
    proc = cli.run("validate", manifest)
    assert proc.returncode == 1
    assert "instance=helpdesk-0 protect: protect must be true or false, got 'yes'" in proc.stderr
