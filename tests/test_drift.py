"""``provisioner drift``: changes made behind the tool's back, apart from pending manifest changes.

Things are changed directly on the emulator (HTTP, as another tool would), then the real CLI runs;
the emulator's request log must show that drift sent nothing but GET requests.
"""

from __future__ import annotations

import json

import pytest
from conftest import ORG_SECRET, USER_SECRET, manifest_text, write
from safety_helpers import Api, by_name, methods
from test_plan_table import CASES as PLAN_CASES
from test_plan_table import CASES_DIR, FP_KEY, live_instances

from provisioner.api.client import Client
from provisioner.engine import stages as engine
from provisioner.engine.diff import FingerprintContext
from provisioner.engine.drift import detect
from provisioner.engine.plan import make_plan
from provisioner.interrupt import StopFlag
from provisioner.ownership import is_unmanaged


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def drift(cli, manifest, env=None) -> tuple[int, dict]:
    return cli.json("drift", str(manifest), env=env)


def findings(report: dict, category: str) -> list[dict]:
    return [f for f in report["findings"] if f["category"] == category]


def test_no_drift_after_apply_exits_0_with_only_gets(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    db.clear_requests()
    proc = cli.run("drift", manifest)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No drift: the 2 declared instance(s) match what provisioner applied." in proc.stdout
    assert methods(db) == {"GET"}


def test_fields_changed_behind_the_back_are_drift_field_by_field(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    changed = by_name(db)["helpdesk-1"]  # creates run in parallel: its id is 1 or 2
    api.put_changed(changed, **{"helpdesk.connectwise.company": "someone-else", "event.poller.refresh_interval": "30"})
    db.clear_requests()
    code, report = drift(cli, manifest)
    assert code == 2
    assert report["command"] == "drift" and report["formatVersion"] == 1 and report["drift"] is True
    [changed] = findings(report, "changed")
    assert (
        changed["kind"] == "drift"
        and changed["name"] == "helpdesk-1"
        and changed["id"] == by_name(db)["helpdesk-1"]["id"]
    )
    assert changed["fields"] == [
        {
            "path": "configuration.event.poller.refresh_interval",
            "live": 30,
            "manifest": 15,
            "sensitive": False,
            "kind": "drift",
        },
        {
            "path": "configuration.helpdesk.connectwise.company",
            "live": "someone-else",
            "manifest": "acme",
            "sensitive": False,
            "kind": "drift",
        },
    ]
    assert report["summary"]["drift"] == 1 and report["summary"]["inSync"] == 1
    assert methods(db) == {"GET"}
    text = cli.run("drift", manifest)
    assert text.returncode == 2
    assert (
        f"drift: changed helpdesk-1 (connectwisehd) id {changed['id']}: changed on the server since provisioner "
        "applied it" in text.stdout
    )
    assert '~ configuration.helpdesk.connectwise.company: live "someone-else", manifest "acme"' in text.stdout


def test_a_manifest_change_is_pending_not_drift(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    text = (
        manifest_text(count=2)
        .replace("company: acme", "company: globex")
        .replace("tags: [helpdesk]", "tags: [helpdesk, new]")
    )
    write(cli.cwd, "m.yaml", text.replace("server.url: api-na", "server.url: api-eu") + "    protect: true\n")
    db.clear_requests()
    code, report = drift(cli, manifest)
    assert code == 0, report
    assert report["drift"] is False and report["pending"] is True
    assert {f["kind"] for f in report["findings"]} == {"pending"}
    paths = {field["path"] for f in findings(report, "changed") for field in f["fields"]}
    assert paths == {
        "configuration.helpdesk.connectwise.company",
        "configuration.helpdesk.connectwise.server.url",
        "tags",
        "protect",
    }
    assert methods(db) == {"GET"}


def test_drift_and_pending_on_one_instance_are_kept_apart(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    api.put_changed(by_name(db)["helpdesk-0"], **{"helpdesk.connectwise.username": "intruder"})
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("company: acme", "company: globex"))
    code, report = drift(cli, manifest)
    assert code == 2
    kinds = {f["kind"]: [x["path"] for x in f["fields"]] for f in findings(report, "changed")}
    assert kinds == {
        "drift": ["configuration.helpdesk.connectwise.username"],
        "pending": ["configuration.helpdesk.connectwise.company"],
    }


def test_missing_extra_copies_namesakes_and_undeclared_are_reported(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=4))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    api("DELETE", f"/instances/{rows['helpdesk-0']['id']}")
    copy = rows["helpdesk-1"]
    api(
        "POST",
        "/instances",
        json={
            "name": "helpdesk-1",
            "element": {"key": "connectwisehd"},
            "tags": copy["tags"],
            "configuration": copy["configuration"],
        },
    )
    api(
        "POST",
        "/instances",
        json={
            "name": "helpdesk-2",
            "element": {"key": "connectwisehd"},
            "tags": ["theirs"],
            "configuration": copy["configuration"],
        },
    )
    write(cli.cwd, "m.yaml", manifest_text(count=3))  # helpdesk-3 no longer declared
    db.clear_requests()
    code, report = drift(cli, manifest)
    assert code == 2
    assert [(f["name"], f["kind"]) for f in findings(report, "missing")] == [("helpdesk-0", "drift")]
    assert [(f["name"], f["kind"]) for f in findings(report, "extra-copy")] == [("helpdesk-1", "drift")]
    assert [(f["name"], f["kind"]) for f in findings(report, "unmanaged-namesake")] == [("helpdesk-2", "drift")]
    assert [(f["name"], f["kind"]) for f in findings(report, "undeclared")] == [("helpdesk-3", "pending")]
    assert report["summary"]["byCategory"]["missing"] == 1
    assert methods(db) == {"GET"}
    assert len(db.instances()) == 5  # nothing was changed


def test_secrets_whose_fingerprint_no_longer_matches(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest, env={"CW_PASSWORD": "applied-password-1"}).returncode == 0
    row = by_name(db)["helpdesk-1"]
    api.put_changed({**row, "tags": [t for t in row["tags"] if not t.startswith("provisioner:fp:")]})
    proc = cli.run("drift", manifest, "--output", "json", env={"CW_PASSWORD": "rotated-password-2"})
    assert proc.returncode == 2
    assert "applied-password-1" not in proc.stdout + proc.stderr
    assert "rotated-password-2" not in proc.stdout + proc.stderr
    secrets = {f["name"]: f for f in findings(json.loads(proc.stdout), "secret")}
    assert secrets["helpdesk-0"]["kind"] == "pending"  # the environment's secret changed since the apply
    assert secrets["helpdesk-1"]["kind"] == "drift"  # its fingerprint tag was removed behind the back
    assert secrets["helpdesk-0"]["fields"] == [
        {
            "path": "configuration.helpdesk.connectwise.password",
            "live": "(sensitive)",
            "manifest": "(sensitive)",
            "sensitive": True,
            "kind": "pending",
        }
    ]
    text = cli.run("drift", manifest, env={"CW_PASSWORD": "rotated-password-2"})
    assert "live (sensitive), manifest (sensitive)" in text.stdout


def test_drift_uses_only_read_only_clients(emulator, tmp_path):
    """The drift path opens ReadOnlyClient, which has no write method at all."""
    manifest = write(tmp_path, "m.yaml", manifest_text(count=1))
    env = {"CE_API_URL": emulator.url, "CE_USER_SECRET": USER_SECRET, "CE_ORGANIZATION_SECRET": ORG_SECRET}
    options = engine.Options(manifest=str(manifest), environ=env)
    validated = engine.validate(options)
    with engine.connect(validated, options, StopFlag(), read_only=True) as connection:
        assert connection.clients and not any(isinstance(c, Client) for c in connection.clients.values())
        assert not any(
            hasattr(c, "create_instance") or hasattr(c, "delete_instance") for c in connection.clients.values()
        )
        report = engine.drift(validated, connection)
    assert [f.category for f in report.findings] == ["missing"]


def test_drift_with_a_bad_manifest_exits_1_without_a_request(cli, db):
    manifest = write(cli.cwd, "m.yaml", "apiVersion: provisioner/v1\nstack: tests\ninstances: [{name: x}]\n")
    proc = cli.run("drift", manifest)
    assert proc.returncode == 1 and db.requests() == []


# -- drift and plan agree (issue 17, point 8) -----------------------------------------------------


def test_another_stacks_namesakes_are_not_drift_on_a_shared_organization(cli, db):
    """The documented setup: two stacks declare the same names in one organization. Each stack's plan
    says no changes, and so does its drift (exit 0), whatever the other stack's copies hold."""
    staging = write(cli.cwd, "staging.yaml", manifest_text(stack="staging", count=2))
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", staging, env={"CW_PASSWORD": "staging-pw-1"}).returncode == 0
    assert cli.run("apply", manifest).returncode == 0
    assert sorted(r["name"] for r in db.instances()) == ["helpdesk-0", "helpdesk-0", "helpdesk-1", "helpdesk-1"]
    plan = cli.run("plan", manifest)
    assert plan.returncode == 0 and "No changes" in plan.stdout, plan.stdout + plan.stderr
    db.clear_requests()
    code, report = drift(cli, manifest)
    assert code == 0, json.dumps(report, indent=2)
    assert report["findings"] == [] and report["summary"]["inSync"] == 2
    text = cli.run("drift", manifest)
    assert text.returncode == 0 and "No drift" in text.stdout and "unmanaged" not in text.stdout
    assert methods(db) == {"GET"}


def plan_and_drift(case: str):
    """The plan (default options, as drift makes it) and the drift report of one plan-table case."""
    directory = CASES_DIR / case
    validated = engine.validate(engine.Options(manifest=str(directory / "manifest.yaml"), environ={}))
    stack = validated.manifest.stack
    live = {"default": live_instances(directory / "live.json", stack)}
    fingerprints = {"default": FingerprintContext(FP_KEY, stack)}
    the_plan = make_plan(stack, validated.desired, live, validated.registry, fingerprints)
    report = detect(the_plan, live, validated.registry, fingerprints, len(validated.desired))
    return the_plan, report, live["default"]


@pytest.mark.parametrize("case", PLAN_CASES)
def test_drift_agrees_with_plan_over_the_plan_table(case):
    """Over the plan table's fixtures: where plan has no changes, drift finds no drift (exit 0); and
    another stack's instance is never a finding of this stack's drift."""
    the_plan, report, live = plan_and_drift(case)
    others = {i.id for i in live if not i.owned_by(the_plan.stack) and not is_unmanaged(i.tags)}
    assert [f for f in report.findings if f.id in others] == [], case
    if not the_plan.has_changes and not the_plan.has_refusals:
        assert not report.has_drift, [f.to_json() for f in report.findings]


def test_the_plan_table_has_cases_for_the_agreement():
    quiet = [c for c in PLAN_CASES if not (p := plan_and_drift(c)[0]).has_changes and not p.has_refusals]
    shared = [c for c in PLAN_CASES if any(not i.owned_by("tests") for i in plan_and_drift(c)[2])]
    assert "other-stack-same-names-noop" in quiet and len(quiet) >= 10, quiet
    assert len(shared) >= 3, shared
