"""What a careful user reads (issue 18, point 5): each wording through the real CLI against the emulator,
or a scripted server where the body on the wire is the point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, base_env, manifest_text, write
from safety_helpers import Api, by_name
from scripted_server import Reply, ScriptedServer

from provisioner.cli.report import IN_USE_HINT
from provisioner.ownership import APPLIED_TAG, FP_TAG, RUN_TAG

CRM = """
apiVersion: provisioner/v1
stack: tests
instances:
  - name: crm
    element: dynamicscrmadfs
    configuration:
      user.username: crm-admin
      user.password: pw-123456
      dynamics.tenant: acme.crm.dynamics.com
"""


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def test_destroy_counts_deletions_only(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    gone = cli.run("destroy", manifest, "--yes")
    assert gone.returncode == 0, gone.stderr
    summary = gone.stdout.splitlines()[-1]
    assert summary.startswith("Destroy: 2 deleted.") and "created" not in summary and "updated" not in summary
    assert db.instances() == []
    again = cli.run("destroy", manifest, "--yes")
    assert again.returncode == 0
    assert again.stdout.startswith("Destroy: nothing to delete, the stack owns no instance.")
    assert "match the manifest" not in again.stdout


def test_a_delete_refused_because_the_instance_is_in_use_names_the_user_and_what_to_do(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    used = by_name(db)["helpdesk-0"]
    db.mark_in_use(used["id"], "formula instance 'sync-contacts'")
    proc = cli.run("destroy", manifest, "--yes")
    assert proc.returncode == 1
    line = next(x for x in proc.stderr.splitlines() if x.startswith("  helpdesk-0:"))
    assert "in use by formula instance 'sync-contacts'" in line and f"(hint: {IN_USE_HINT})" in line
    assert "Destroy: 1 deleted, 1 failed." in proc.stdout
    assert [r["name"] for r in db.instances()] == ["helpdesk-0"]  # the other one is deleted
    code, document = cli.json("destroy", manifest, "--yes")
    [failed] = [c for c in document["changes"] if c["status"] == "failed"]
    assert code == 1 and failed["error"]["httpStatus"] == 409 and failed["error"]["hint"] == IN_USE_HINT


def test_drift_prints_the_declared_element_key_for_every_finding(cli, db, api):
    manifest = write(cli.cwd, "crm.yaml", CRM)
    assert cli.run("apply", manifest).returncode == 0
    row = by_name(db)["crm"]
    [listed] = api("GET", "/instances")
    assert listed["element"]["key"] == "dynamicscrm"  # what the API reports for a dynamicscrmadfs instance
    api.put_changed(row, **{"dynamics.tenant": "other.crm.dynamics.com"})  # a field changed behind the back
    api(
        "POST",
        "/instances",
        json={**{k: row[k] for k in ("name", "tags", "configuration")}, "element": {"key": "dynamicscrmadfs"}},
    )
    proc = cli.run("drift", manifest)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    findings = [line for line in proc.stdout.splitlines() if line.startswith(("drift:", "pending:"))]
    assert len(findings) == 2 and all("crm (dynamicscrmadfs)" in line for line in findings), proc.stdout
    assert "(dynamicscrm)" not in proc.stdout
    code, report = cli.json("drift", manifest)
    assert {f["element"] for f in report["findings"]} == {"dynamicscrmadfs"}


def test_render_prints_the_body_apply_sends(tmp_path):
    """The POST body on the wire (a scripted server sees it) is render's body, placeholders aside."""
    text = (
        CRM.replace("pw-123456", '"{{ env.CRM_PASSWORD }}"').replace("stack: tests", "stack: tests\n")
        + "    tags: [crm]\n"
    )
    write(tmp_path, "m.yaml", text)
    env = base_env() | {"CRM_PASSWORD": "Canary-crm-5521"}
    run = [sys.executable, "-m", "provisioner"]
    shown = subprocess.run(
        [*run, "render", "m.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first.startswith("# (sensitive): secret values") and RUN_TAG in first and APPLIED_TAG in first
    [entry] = yaml.safe_load(shown.stdout)
    created = {
        "id": 7,
        "name": "crm",
        "token": "tok-7",
        "element": {"key": "dynamicscrm"},
        "tags": [],
        "configuration": {},
    }
    listed = [{**created, "tags": ["provisioner:stack=tests"]}]
    counted = Reply(200, headers={"elements-total-count": "1"}, body=listed)  # the final check's count: 0 + 1
    script = [Reply(404, body={"message": "No instances found"}), Reply(200, body=created), counted]
    with ScriptedServer(script) as server:
        env |= {"CE_API_URL": server.base_url, "CE_USER_SECRET": "u", "CE_ORGANIZATION_SECRET": "o"}
        proc = subprocess.run(
            [*run, "apply", "m.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sent = next(r for r in server.requests if r.method == "POST").json()
    assert entry["request"] == "POST /instances" and list(entry["body"]) == list(sent)
    assert entry["body"]["configuration"] == {**sent["configuration"], "user.password": "(sensitive)"}
    assert sent["configuration"]["user.password"] == "Canary-crm-5521"
    assert "document.tagging" not in sent["configuration"] and entry["defaults"]["document.tagging"] is False
    assert len(entry["body"]["tags"]) == len(sent["tags"])
    for shown_tag, sent_tag in zip(entry["body"]["tags"], sent["tags"], strict=True):
        if shown_tag.startswith((FP_TAG, APPLIED_TAG, RUN_TAG)):
            assert shown_tag.endswith("=(computed at apply)") and sent_tag.startswith(shown_tag.split("=")[0] + "=")
        else:
            assert shown_tag == sent_tag
    assert any(t.startswith(RUN_TAG) for t in sent["tags"]) and any(t.startswith(APPLIED_TAG) for t in sent["tags"])
    document = json.loads(
        subprocess.run(
            [*run, "render", "m.yaml", "-o", "json"], cwd=tmp_path, env=env, capture_output=True, text=True
        ).stdout
    )
    assert document["requests"] == [entry] and RUN_TAG in document["computedAtApply"]


def test_the_quickstarts_schema_comment_works_in_the_checkout_and_wherever_it_is_copied(tmp_path):
    quickstart = REPO / "examples" / "quickstart.yaml"
    first = quickstart.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = first.split("$schema=", 1)[1]
    shipped = subprocess.run(
        [sys.executable, "-m", "provisioner", "schema", "manifest"], env=base_env(), capture_output=True, text=True
    ).stdout
    assert (quickstart.parent / target).read_text(encoding="utf-8") == shipped  # in the checkout, as it is
    copy = tmp_path / "provisioner.yaml"
    copy.write_text(quickstart.read_text(encoding="utf-8"), encoding="utf-8")
    assert not (tmp_path / target).exists()
    command = next(line for line in quickstart.read_text().splitlines() if "provisioner schema manifest >" in line)
    program, _, out = command.lstrip("# ").rstrip(")").partition(" > ")
    assert program.split() == ["provisioner", "schema", "manifest"] and out.strip() == target
    (tmp_path / out.strip()).write_text(shipped, encoding="utf-8")  # what the comment tells the user to run
    assert json.loads((copy.parent / target).read_text())["$id"].endswith("/schemas/manifest/v1.json")
