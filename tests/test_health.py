"""Connections that work, not only exist (issue 19): ``provisioner check``, ``enabled`` in the manifest and
``apply --reauthenticate``, through the real CLI against the emulator (or a scripted API where the
emulator would not misbehave), with assertions on what the server holds and the requests it received."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from conftest import ORG_SECRET, USER_SECRET, base_env, manifest_text, write
from safety_helpers import Api, by_name, methods, writes
from scripted_server import Reply, ScriptedServer
from test_reach import OAUTH_MANIFEST

from provisioner.ownership import stack_marker

BASE = "/elements/api-v2"


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def declared_disabled(text: str, name: str) -> str:
    return text.replace(f"  - name: {name}\n", f"  - name: {name}\n    enabled: false\n")


def entries(report: dict) -> dict[str, dict]:
    return {e["name"]: e for e in report["instances"]}


# -- check ---------------------------------------------------------------------------------------------


def test_check_tells_each_status_from_one_listing_and_sends_nothing_else(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=5))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    db.refuse_credentials(rows["helpdesk-1"]["id"])
    api("DELETE", f"/instances/{rows['helpdesk-2']['id']}/enabled")
    api("DELETE", f"/instances/{rows['helpdesk-3']['id']}")
    write(cli.cwd, "m.yaml", manifest_text(count=4).replace("helpdesk-3", "helpdesk-9"))  # helpdesk-4: undeclared
    db.clear_requests()
    code, report = cli.json("check", manifest)
    assert code == 2, report
    assert [(r["method"], r["path"]) for r in db.requests()] == [("GET", f"{BASE}/instances")]
    found = entries(report)
    assert {n: e["status"] for n, e in found.items()} == {
        "helpdesk-0": "healthy",
        "helpdesk-1": "invalid",
        "helpdesk-2": "disabled",
        "helpdesk-9": "missing",
    }
    assert report["command"] == "check" and report["healthy"] is False and report["pinged"] is False
    assert set(found["helpdesk-0"]) == {"name", "target", "element", "id", "status", "ok", "detail", "command"}
    assert found["helpdesk-1"]["id"] == rows["helpdesk-1"]["id"] and found["helpdesk-1"]["element"] == "connectwisehd"
    assert found["helpdesk-1"]["command"] == shlex.join(
        ["provisioner", "apply", str(manifest), "--reauthenticate", "helpdesk-1"]
    )
    assert found["helpdesk-2"]["command"] == shlex.join(
        ["provisioner", "apply", str(manifest), "--target", "helpdesk-2"]
    )
    assert [(e["name"], e["status"]) for e in report["undeclared"]] == [("helpdesk-4", "healthy")]
    assert report["summary"]["byStatus"] == {"healthy": 1, "invalid": 1, "disabled": 1, "missing": 1, "unreachable": 0}
    text = cli.run("check", manifest)
    assert text.returncode == 2
    assert f"invalid: helpdesk-1 (connectwisehd) id {rows['helpdesk-1']['id']}: the provider refused" in text.stdout
    assert f"    run: provisioner apply {manifest} --reauthenticate helpdesk-1" in text.stdout
    assert "owned by the stack, no longer declared:\nhealthy: helpdesk-4" in text.stdout
    assert "Not healthy: 3 of 4 need attention" in text.stdout
    markdown = cli.run("check", manifest, "-o", "markdown")
    assert markdown.returncode == 2
    assert "| instance | element | id | status | detail | run |" in markdown.stdout
    assert f"| helpdesk-1 | connectwisehd | {rows['helpdesk-1']['id']} | invalid |" in markdown.stdout
    assert methods(db) == {"GET"}  # check never writes


def test_all_healthy_exits_0_and_a_declared_disabled_instance_is_fine(cli, db):
    manifest = write(cli.cwd, "m.yaml", declared_disabled(manifest_text(count=3), "helpdesk-1"))
    assert cli.run("apply", manifest).returncode == 0
    db.clear_requests()
    code, report = cli.json("check", manifest, "--ping")
    assert code == 0, report
    found = entries(report)
    assert found["helpdesk-1"]["status"] == "disabled" and found["helpdesk-1"]["ok"] is True
    assert {found[n]["status"] for n in ("helpdesk-0", "helpdesk-2")} == {"healthy"}
    pings = sorted(r["path"] for r in db.requests() if "/hubs/" in r["path"])
    assert pings == [f"{BASE}/hubs/helpdesk/ping"] * 2  # not the one declared disabled
    assert all(r["status"] == 200 for r in db.requests()) and methods(db) == {"GET"}
    assert "ping helpdesk: ok" in found["helpdesk-0"]["detail"]


def test_ping_sends_each_instances_own_token_and_a_failed_ping_is_unreachable(tmp_path):
    """A scripted API: the listing says healthy, one ping is refused; each ping's Element part is checked."""
    marker = stack_marker("tests")

    def item(n: int) -> dict:
        element = {"key": "connectwisehd", "hub": "helpdesk"}
        return {"id": n + 1, "name": f"helpdesk-{n}", "element": element, "tags": [marker], "token": f"tok-{n}-Qz81"}

    listing = [item(n) for n in range(3)]

    def answer(received):
        if received.path == "/instances":
            return Reply(200, {"elements-total-count": "3"}, listing)
        token = received.headers["authorization"].rpartition("Element ")[2]
        if token == "tok-1-Qz81":
            return Reply(401, {}, {"requestId": "r1", "message": "Invalid Element token provided"})
        return Reply(200, {}, {"status": "ok"})

    with ScriptedServer(default=answer) as server:
        work = tmp_path / "work"
        write(work, "m.yaml", manifest_text(count=3))
        env = {**base_env(), "CE_API_URL": server.base_url, "CE_USER_SECRET": USER_SECRET}
        env["CE_ORGANIZATION_SECRET"] = ORG_SECRET
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", "check", "m.yaml", "--ping", "-o", "json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        received = server.requests
    assert proc.returncode == 2, proc.stdout + proc.stderr
    pings = [r for r in received if r.path == "/hubs/helpdesk/ping"]
    assert len(pings) == 3 and {r.method for r in received} == {"GET"}
    for ping in pings:  # the Element part is the token of an instance, each one once
        assert ping.headers["authorization"].startswith(f"User {USER_SECRET}, Organization {ORG_SECRET}, Element tok-")
    assert sorted(p.headers["authorization"].rpartition(" ")[2] for p in pings) == [f"tok-{n}-Qz81" for n in range(3)]
    found = entries(json.loads(proc.stdout))
    assert found["helpdesk-1"]["status"] == "unreachable" and found["helpdesk-1"]["ok"] is False
    assert found["helpdesk-1"]["detail"] == "ping helpdesk failed: HTTP 401: Invalid Element token provided"
    assert found["helpdesk-0"]["status"] == found["helpdesk-2"]["status"] == "healthy"
    assert "tok-1-Qz81" not in proc.stdout + proc.stderr


def test_check_never_writes_even_with_ping_and_every_problem_at_once(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=3))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    db.refuse_credentials(rows["helpdesk-0"]["id"])
    api("DELETE", f"/instances/{rows['helpdesk-1']['id']}/enabled")
    db.clear_requests()
    for args in (("--ping",), ("--ping", "-o", "json"), ("--ping", "-o", "markdown"), ()):
        assert cli.run("check", manifest, *args).returncode == 2
    assert methods(db) == {"GET"} and writes(db) == []


# -- enabled: false ------------------------------------------------------------------------------------


def test_enabled_false_is_applied_with_the_enabled_endpoint_alone_and_flipped_back(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    ident = by_name(db)["helpdesk-1"]["id"]
    write(cli.cwd, "m.yaml", declared_disabled(manifest_text(count=2), "helpdesk-1"))
    code, plan = cli.json("plan", manifest)
    assert code == 0
    [change] = [c for c in plan["changes"] if c["action"] != "noop"]
    assert change["action"] == "disable" and change["id"] == ident
    assert change["diff"] == [{"op": "change", "path": "enabled", "old": True, "new": False, "sensitive": False}]
    assert plan["summary"]["disable"] == 1
    text = cli.run("plan", manifest)
    assert "|| disable helpdesk-1" in text.stdout and "1 to disable" in text.stdout
    db.clear_requests()
    applied = cli.run("apply", manifest)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert writes(db) == [("DELETE", f"{BASE}/instances/{ident}/enabled")]
    assert by_name(db)["helpdesk-1"]["disabled"] is True and by_name(db)["helpdesk-0"]["disabled"] is False
    db.clear_requests()
    assert cli.run("apply", manifest).returncode == 0 and writes(db) == []  # converged
    write(cli.cwd, "m.yaml", manifest_text(count=2))  # enabled defaults to true
    db.clear_requests()
    code, result = cli.json("apply", manifest)
    assert code == 0 and [c["action"] for c in result["changes"] if c["action"] != "noop"] == ["enable"]
    assert writes(db) == [("PUT", f"{BASE}/instances/{ident}/enabled")]
    assert by_name(db)["helpdesk-1"]["disabled"] is False


def test_enabled_from_an_expression_and_a_new_instance_declared_disabled(cli, db):
    text = manifest_text(count=2).replace(
        "  - name: helpdesk-1\n", '  - name: helpdesk-1\n    enabled: "{{ inputs.active }}"\n'
    )
    manifest = write(cli.cwd, "m.yaml", text.replace("instances:", "inputs:\n  active: true\ninstances:"))
    assert cli.run("apply", manifest, "--set", "active=false").returncode == 0
    assert by_name(db)["helpdesk-1"]["disabled"] is True and by_name(db)["helpdesk-0"]["disabled"] is False
    code, plan = cli.json("plan", manifest)  # inputs.active is true again
    assert [c["action"] for c in plan["changes"] if c["action"] != "noop"] == ["enable"]


def test_enabled_must_be_a_boolean_located_and_nothing_sent(cli, db):
    manifest = write(
        cli.cwd,
        "m.yaml",
        manifest_text(count=1).replace("  - name: helpdesk-0\n", '  - name: helpdesk-0\n    enabled: "{{ 1 }}"\n'),
    )
    proc = cli.run("plan", manifest)
    assert proc.returncode == 1
    assert "m.yaml:5 instance=helpdesk-0 enabled: enabled must be true or false, got 1" in proc.stderr
    assert "Traceback" not in proc.stderr and db.requests() == []


def test_drift_reports_an_instance_disabled_or_enabled_behind_the_back(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", declared_disabled(manifest_text(count=3), "helpdesk-1"))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    assert cli.json("drift", manifest)[0] == 0
    api("DELETE", f"/instances/{rows['helpdesk-0']['id']}/enabled")
    api("PUT", f"/instances/{rows['helpdesk-1']['id']}/enabled")
    db.clear_requests()
    code, report = cli.json("drift", manifest)
    assert code == 2
    found = sorted((f["category"], f["kind"], f["name"]) for f in report["findings"])
    assert found == [("disabled", "drift", "helpdesk-0"), ("enabled", "drift", "helpdesk-1")]
    assert report["summary"]["inSync"] == 1 and methods(db) == {"GET"}
    text = cli.run("drift", manifest).stdout
    assert "drift: disabled helpdesk-0" in text and "the manifest declares it enabled" in text


def test_saved_plans_target_and_markdown_know_the_new_actions(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=3))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    text = manifest_text(count=3)
    write(cli.cwd, "m.yaml", declared_disabled(declared_disabled(text, "helpdesk-1"), "helpdesk-2"))
    saved = cli.cwd / "plan.json"
    md = cli.run("plan", manifest, "--target", "helpdesk-1", "--out", saved, "-o", "markdown")
    assert md.returncode == 0, md.stderr
    assert "| disable | 1 |" in md.stdout and "`|| disable` `helpdesk-1`" in md.stdout
    doc = json.loads(saved.read_text())
    assert [(c["action"], c["name"]) for c in doc["changes"]] == [("disable", "helpdesk-1")]
    db.clear_requests()
    code, result = cli.json("apply", saved)
    assert code == 0 and result["status"]["ok"] == 1
    assert writes(db) == [("DELETE", f"{BASE}/instances/{rows['helpdesk-1']['id']}/enabled")]
    assert cli.run("plan", manifest, "--target", "helpdesk-2", "--out", saved).returncode == 0
    api("DELETE", f"/instances/{rows['helpdesk-2']['id']}/enabled")  # behind the back, after the review
    db.clear_requests()
    stale = cli.run("apply", saved)
    assert stale.returncode == 1 and "helpdesk-2" in stale.stderr and writes(db) == []


# -- apply --reauthenticate ----------------------------------------------------------------------------


def test_reauthenticate_a_good_instance_sends_the_full_body_once_and_keeps_id_and_token(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    before = by_name(db)["helpdesk-0"]
    plan = cli.run("plan", manifest, "--reauthenticate", "helpdesk-0")
    assert "@ reauthenticate helpdesk-0" in plan.stdout and "1 to re-authenticate" in plan.stdout
    db.clear_requests()
    code, result = cli.json("apply", manifest, "--reauthenticate", "helpdesk-0")
    assert code == 0, result
    assert [(r["method"], r["path"], r["query"]) for r in db.requests() if r["method"] != "GET"] == [
        ("PUT", f"{BASE}/instances/{before['id']}", "reAuthenticate=true")
    ]
    after = by_name(db)["helpdesk-0"]
    assert (after["id"], after["token"], after["valid"]) == (before["id"], before["token"], True)
    assert after["configuration"]["helpdesk.connectwise.password"] == "pw-0"
    assert after["tags"] == [t for t in before["tags"] if not t.startswith("provisioner:run=")]  # as any PUT
    assert after["configuration"] == before["configuration"]


def test_a_refused_instance_fails_alone_then_the_suggested_command_fixes_it(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    rows = by_name(db)
    db.refuse_credentials(rows["helpdesk-0"]["id"])
    _, report = cli.json("check", manifest)
    command = shlex.split(entries(report)["helpdesk-0"]["command"])
    assert command[:2] == ["provisioner", "apply"]
    db.clear_requests()
    refused = cli.run(*command[1:], "--reauthenticate", "helpdesk-1")  # one refused, one good
    assert refused.returncode == 1
    assert (
        "reauthenticate helpdesk-0" in refused.stdout
        and "the provider refused the instance's credentials" in refused.stdout
    )
    assert "pw-0" not in refused.stdout + refused.stderr
    assert by_name(db)["helpdesk-0"]["valid"] is False and by_name(db)["helpdesk-1"]["valid"] is True
    assert len([r for r in db.requests() if r["method"] == "PUT"]) == 2  # the good one was not stopped
    fixed = cli.run(*command[1:], env={"CW_PASSWORD": "changed-at-the-provider"})  # the customer's new password
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    row = by_name(db)["helpdesk-0"]
    assert (
        row["valid"] is True and row["id"] == rows["helpdesk-0"]["id"] and row["token"] == rows["helpdesk-0"]["token"]
    )
    assert row["configuration"]["helpdesk.connectwise.password"] == "changed-at-the-provider"
    assert cli.run("check", manifest, env={"CW_PASSWORD": "changed-at-the-provider"}).returncode == 0


def test_reauthenticate_refuses_an_undeclared_name_and_an_oauth_instance_before_any_request(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    db.clear_requests()
    for command in ("apply", "plan"):
        proc = cli.run(command, manifest, "--reauthenticate", "nope")
        assert proc.returncode == 1
        assert "--reauthenticate nope: no instance of that name is declared (hint: declared: helpdesk-0)" in proc.stderr
    assert cli.run("apply", manifest, "--target", "x-*", "--reauthenticate", "helpdesk-0").returncode == 1
    assert cli.run("schemas", "pull", "sfdc", "--out", "pulled").returncode == 0
    refresh = '          oauth.user.refresh_token: "{{ env.SF_REFRESH }}"\n'
    oauth = write(cli.cwd, "sf.yaml", OAUTH_MANIFEST.rstrip(" ") + refresh)
    env = {"SF_KEY": "key-1234", "SF_SECRET": "Canary-sf-secret-77", "SF_REFRESH": "Canary-refresh-31"}
    assert cli.run("apply", oauth, env=env).returncode == 0
    db.clear_requests()
    proc = cli.run("apply", oauth, "--reauthenticate", "crm-sf", env=env)
    assert proc.returncode == 1
    assert "element 'sfdc' authenticates with OAuth" in proc.stderr and "Cloud Elements console" in proc.stderr
    assert "Canary" not in proc.stderr + proc.stdout
    assert db.requests() == []


def test_a_provider_refusal_answered_403_is_reported_for_that_instance_only(tmp_path):
    """An API that answers the refused re-authentication with 403: that instance fails, the run goes on."""
    marker = stack_marker("tests")
    listing = [
        {
            "id": n + 1,
            "name": f"helpdesk-{n}",
            "element": {"key": "connectwisehd"},
            "tags": [marker],
            "token": f"tok-{n}-Qz81",
            "configuration": {},
        }
        for n in range(2)
    ]

    def answer(received):
        if received.method == "GET":
            return Reply(200, {"elements-total-count": "2"}, listing)
        if received.path == "/instances/1":
            return Reply(403, {}, {"requestId": "r1", "message": "Provider refused: invalid password"})
        return Reply(200, {}, {**listing[1], "token": "tok-1-Qz81"})

    with ScriptedServer(default=answer) as server:
        work = tmp_path / "work"
        write(work, "m.yaml", manifest_text(count=2))
        env = {**base_env(), "CE_API_URL": server.base_url, "CE_USER_SECRET": USER_SECRET}
        env["CE_ORGANIZATION_SECRET"] = ORG_SECRET
        args = ["apply", "m.yaml", "--reauthenticate", "helpdesk-0", "--reauthenticate", "helpdesk-1", "-o", "json"]
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        puts = [(r.path, r.query) for r in server.requests if r.method == "PUT"]
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["aborted"] is None
    status = {c["name"]: (c["status"], c["error"] and c["error"]["httpStatus"]) for c in result["changes"]}
    assert status == {"helpdesk-0": ("failed", 403), "helpdesk-1": ("ok", None)}
    assert sorted(puts) == [
        ("/instances/1", {"reAuthenticate": ["true"]}),
        ("/instances/2", {"reAuthenticate": ["true"]}),
    ]
