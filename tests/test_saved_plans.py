"""Reviewed plans: ``plan --out FILE`` then ``apply FILE`` executes exactly that plan, or nothing.

Every test runs the real CLI against the emulator and asserts on what it holds and on its request log.
"""

from __future__ import annotations

import json
import os
import shlex
import stat

import pytest
from conftest import ORG_SECRET, USER_SECRET, Cli, manifest_text, write
from safety_helpers import Api, by_name, methods, writes

PREFIX = "/elements/api-v2/instances"


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def test_saved_plan_holds_no_secret_is_private_and_apply_file_executes_it(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    env = {"CW_PASSWORD": "saved-plan-password-1"}
    proc = cli.run("plan", manifest, "--out", "plan.json", "--detailed-exitcode", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Plan saved to plan.json" in proc.stderr
    path = cli.cwd / "plan.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    for secret in ("saved-plan-password-1", USER_SECRET, ORG_SECRET):
        assert secret not in text
    saved = json.loads(text)
    assert saved["kind"] == "provisioner-plan" and saved["formatVersion"] == 1
    assert saved["manifest"]["path"] == "m.yaml" and saved["manifest"]["digest"]  # relative to plan.json
    assert saved["inputs"]["digest"] and saved["stack"] == "tests"
    assert [c["action"] for c in saved["changes"]] == ["create", "create"]
    password = next(d for d in saved["changes"][0]["diff"] if d["path"].endswith("password"))
    assert password == {
        "op": "add",
        "path": "configuration.helpdesk.connectwise.password",
        "old": None,
        "new": "(sensitive)",
        "sensitive": True,
    }
    assert set(saved["desired"]["default/helpdesk-0"]) >= {"element", "configuration.helpdesk.connectwise.password"}
    assert methods(db) == {"GET"} and db.instances() == []  # plan wrote nothing

    db.clear_requests()
    applied = cli.run("apply", "plan.json", "--outputs", "tokens.json", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "2 created" in applied.stdout
    assert [m for m, _ in writes(db)] == ["POST", "POST"]
    rows = by_name(db)
    assert rows["helpdesk-0"]["configuration"]["helpdesk.connectwise.password"] == "saved-plan-password-1"
    tokens = json.loads((cli.cwd / "tokens.json").read_text())["instances"]
    assert tokens["helpdesk-1"]["token"] == rows["helpdesk-1"]["token"]


def test_apply_file_refuses_when_a_touched_instance_changed_on_the_server(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=2).replace("company: acme", "company: globex"))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    changed = by_name(db)["helpdesk-1"]  # creates run in parallel: its id is 1 or 2
    api.put_changed(changed, **{"helpdesk.connectwise.username": "someone-else"})
    db.clear_requests()
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 1
    assert "no longer matches" in proc.stderr
    assert (
        f"helpdesk-1 (id {changed['id']}): changed on the server since the plan: "
        "configuration.helpdesk.connectwise.username" in proc.stderr
    )
    assert "run plan --out again" in proc.stderr
    assert methods(db) == {"GET"}  # refused after reading, before any write
    assert {r["configuration"]["helpdesk.connectwise.company"] for r in db.instances()} == {"acme"}


def test_apply_file_refuses_before_any_request_when_the_manifest_renders_differently(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("company: acme", "company: globex"))
    db.clear_requests()
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 1
    assert "helpdesk-0: renders differently now: configuration.helpdesk.connectwise.company" in proc.stderr
    assert "the manifest file m.yaml changed since the plan" in proc.stderr  # the path read from the plan
    assert db.requests() == [] and db.instances() == []


def test_apply_file_refuses_a_changed_secret_without_showing_it(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--out", "plan.json", env={"CW_PASSWORD": "first-secret-1"}).returncode == 0
    db.clear_requests()
    proc = cli.run("apply", "plan.json", env={"CW_PASSWORD": "second-secret-2"})
    assert proc.returncode == 1
    assert "helpdesk-0: renders differently now: configuration.helpdesk.connectwise.password" in proc.stderr
    assert "first-secret-1" not in proc.stderr + proc.stdout and "second-secret-2" not in proc.stderr + proc.stdout
    assert db.requests() == []
    same = cli.run("apply", "plan.json", env={"CW_PASSWORD": "first-secret-1"})
    assert same.returncode == 0, same.stderr
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.password"] == "first-secret-1"


def test_apply_file_refuses_when_an_instance_it_would_create_now_exists(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    assert cli.run("apply", manifest).returncode == 0  # someone applied in between
    db.clear_requests()
    proc = cli.run("apply", "plan.json", "--output", "json")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert "helpdesk-0: the plan creates it, but an instance named 'helpdesk-0' now exists (id 1)" in error["message"]
    assert methods(db) == {"GET"} and len(db.instances()) == 1


def test_apply_file_leaves_out_drift_on_instances_it_does_not_touch_with_a_warning(cli, db, api):
    """10,000 instances, one console edit: the reviewed plan still applies; the edit is reported, and
    nothing the reviewer did not see is written."""
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=4))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=4).replace("pw-0", "pw-0b"))
    assert cli.run("plan", manifest, "--out", "plan.json", "--prune").returncode == 0
    rows = by_name(db)
    api.put_changed(rows["helpdesk-1"], **{"helpdesk.connectwise.company": "drifted"})  # a console edit
    api("DELETE", f"/instances/{rows['helpdesk-2']['id']}")  # deleted behind the back
    parts = manifest_text(count=5).replace("pw-0", "pw-0b").split("  - name: ")
    parts[4] = parts[4].replace("company: acme", "company: globex")  # helpdesk-3 declared differently now
    write(cli.cwd, "m.yaml", "  - name: ".join(parts))  # and helpdesk-4 newly declared
    db.clear_requests()
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 0, proc.stderr
    assert [(m, p) for m, p in writes(db)] == [("PUT", f"{PREFIX}/{rows['helpdesk-0']['id']}")]
    after = by_name(db)
    assert after["helpdesk-0"]["configuration"]["helpdesk.connectwise.password"] == "pw-0b"
    assert after["helpdesk-1"]["configuration"]["helpdesk.connectwise.company"] == "drifted"
    assert "helpdesk-2" not in after and "helpdesk-4" not in after
    for name, now in (
        ("helpdesk-1", "update (configuration differs)"),
        ("helpdesk-2", "create"),
        ("helpdesk-3", "update"),
        ("helpdesk-4", "create"),
    ):
        assert f"warning: {name}: now {now}" in proc.stderr, name
    assert "which the saved plan does not have: left as is; run plan again" in proc.stderr
    assert proc.stderr.count("warning: helpdesk-1:") == 1
    assert "1 updated, 0 replaced, 0 deleted, 0 failed" in proc.stdout


def test_apply_file_still_refuses_a_touched_instance_among_untouched_drift(cli, db, api):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=3))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=3).replace("pw-0", "pw-0b"))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    rows = by_name(db)
    api.put_changed(rows["helpdesk-1"], **{"helpdesk.connectwise.company": "drifted"})
    api.put_changed(rows["helpdesk-0"], **{"helpdesk.connectwise.username": "someone-else"})
    db.clear_requests()
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 1
    assert f"helpdesk-0 (id {rows['helpdesk-0']['id']}): changed on the server since the plan" in proc.stderr
    assert "helpdesk-1" not in proc.stderr.split("no longer matches", 1)[1]  # untouched: not a reason
    assert methods(db) == {"GET"}


def test_a_plan_saved_in_one_directory_applies_from_another(cli, db):
    text = manifest_text(count=1, extra="inputs:\n  company: acme\n")
    write(
        cli.cwd,
        "deploy/m.yaml",
        text.replace("connectwise.company: acme", "connectwise.company: '{{ inputs.company }}'"),
    )
    write(cli.cwd, "deploy/inputs/prod.yaml", "company: initech\n")
    (cli.cwd / "plans").mkdir()
    planned = cli.run("plan", "deploy/m.yaml", "--inputs", "deploy/inputs/prod.yaml", "--out", "plans/plan.json")
    assert planned.returncode == 0, planned.stderr
    saved = json.loads((cli.cwd / "plans" / "plan.json").read_text())
    assert saved["manifest"]["path"] == "../deploy/m.yaml"
    assert saved["inputs"]["files"] == ["../deploy/inputs/prod.yaml"]
    elsewhere = cli.cwd.parent / "elsewhere"
    elsewhere.mkdir()
    moved = cli.cwd.parent / "moved"  # the checkout moved, as a CI job's fresh checkout does
    cli.cwd.rename(moved)
    proc = Cli(elsewhere, cli.env).run("apply", moved / "plans" / "plan.json")
    assert proc.returncode == 0, proc.stderr
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.company"] == "initech"


def test_the_apply_it_with_line_repeats_the_options_the_apply_needs_and_works_verbatim(cli, db):
    text = manifest_text(count=1, extra="inputs:\n  company: acme\n")
    write(cli.cwd, "m.yaml", text.replace("connectwise.company: acme", "connectwise.company: '{{ inputs.company }}'"))
    args = ("plan", "m.yaml", "--local", "--set", "company=init tech", "--max-foreach", "7", "--out", "p.json")
    proc = cli.run(*args)
    assert proc.returncode == 0, proc.stderr
    line = proc.stderr.split("apply it with: ", 1)[1].strip()
    assert line == "provisioner apply p.json --local --set 'company=init tech' --max-foreach 7"
    applied = cli.run(*shlex.split(line)[1:])
    assert applied.returncode == 0, applied.stderr
    assert "1 created" in applied.stdout and db.requests() == []  # --local: the embedded emulator only
    bare = write(cli.cwd, "q.yaml", manifest_text(count=1))
    plain = cli.run("plan", bare, "--out", "q.json")
    assert plain.stderr.strip().endswith("apply it with: provisioner apply q.json")


def test_show_prints_a_saved_plan_as_plan_did_offline(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=2))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=3).replace("company: acme", "company: globex"))
    shown_by_plan = {}
    for output in ("text", "json", "markdown"):
        proc = cli.run("plan", manifest, "--out", f"{output}.json", "--prune", "-o", output)
        assert proc.returncode == 0, proc.stderr
        shown_by_plan[output] = proc.stdout
    db.clear_requests()
    offline = {k: v for k, v in cli.env.items() if not k.startswith("CE_")}
    for output, expected in shown_by_plan.items():
        proc = Cli(cli.cwd, offline).run("show", f"{output}.json", "-o", output)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected, output
        assert "Saved plan" in proc.stderr and "options: prune;" in proc.stderr
    assert '~ configuration.helpdesk.connectwise.company: "acme" -> "globex"' in shown_by_plan["text"]
    assert db.requests() == []
    bad = cli.run("show", manifest)
    assert bad.returncode == 1 and "m.yaml: not a saved plan" in bad.stderr and not bad.stdout
    missing = cli.run("show", "nothing.json")
    assert missing.returncode == 1 and "nothing.json: cannot read file: No such file or directory" in missing.stderr


def test_apply_file_keeps_the_plans_options_and_needs_the_same_set_options(cli, db):
    text = manifest_text(count=1, extra="inputs:\n  company: acme\n")
    text = text.replace("connectwise.company: acme", "connectwise.company: '{{ inputs.company }}'")
    manifest = write(cli.cwd, "m.yaml", text)
    assert cli.run("plan", manifest, "--set", "company=initech", "--out", "plan.json").returncode == 0
    prune = cli.run("apply", "plan.json", "--prune")
    assert prune.returncode == 1 and "--prune cannot be given with a saved plan" in prune.stderr
    missing = cli.run("apply", "plan.json")
    assert missing.returncode == 1 and "the plan was made with --set company" in missing.stderr
    other = cli.run("apply", "plan.json", "--set", "company=globex")
    assert (
        other.returncode == 1 and "renders differently now: configuration.helpdesk.connectwise.company" in other.stderr
    )
    assert db.instances() == []
    same = cli.run("apply", "plan.json", "--set", "company=initech")
    assert same.returncode == 0, same.stderr
    assert db.instances()[0]["configuration"]["helpdesk.connectwise.company"] == "initech"


def test_a_plan_with_refusals_is_not_saved(cli, db, api):
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
    api("POST", "/instances", json=body)
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    proc = cli.run("plan", manifest, "--out", "plan.json")
    assert proc.returncode == 1 and "no plan saved to plan.json" in proc.stderr
    assert not (cli.cwd / "plan.json").exists()


def test_a_manifest_is_still_applied_directly(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    assert len(db.instances()) == 1


def test_apply_file_reads_a_plan_whose_changes_carry_the_http_method_of_older_files(cli, db):
    """Plans saved before apply chose the verb itself carry a "method" per change: still applied, with
    the verb apply chooses now (PUT for a configuration change)."""
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("apply", manifest).returncode == 0
    write(cli.cwd, "m.yaml", manifest_text(count=1).replace("company: acme", "company: globex"))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    saved = json.loads((cli.cwd / "plan.json").read_text())
    assert [c["action"] for c in saved["changes"]] == ["update"] and "method" not in saved["changes"][0]
    saved["changes"][0]["method"] = "PATCH"  # an older file's field, not what apply sends any more
    (cli.cwd / "plan.json").write_text(json.dumps(saved))
    db.clear_requests()
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 0, proc.stderr
    assert [m for m, _ in writes(db)] == ["PUT"]
    assert by_name(db)["helpdesk-0"]["configuration"]["helpdesk.connectwise.company"] == "globex"


# -- a saved plan is untrusted input (issue 17, point 9) ---------------------------------------------

DEEP = 100_000


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


MALFORMED = {  # a change to a real saved plan, and what the error must name
    "changes-string": (lambda p: p.update(changes="x"), "changes: must be array, not a string"),
    "changes-null": (lambda p: p.update(changes=None), "changes: must be array, not null"),
    "change-null": (lambda p: p["changes"].append(None), "changes[1]: must be object, not null"),
    "diff-string": (lambda p: p["changes"][0].update(diff="x"), "changes[0].diff: must be array"),
    "live-without-fields": (lambda p: p["changes"][0].update(live={"id": 1}), "'fields' is a required property"),
    "id-object": (lambda p: p["changes"][0].update(id={"a": 1}), "changes[0].id: must be integer or string or null"),
    "action-unknown": (lambda p: p["changes"][0].update(action="explode"), "changes[0].action: 'explode' is not one"),
    "desired-key": (lambda p: p["desired"].update({"no-slash": {}}), "desired:"),
    "desired-digest": (lambda p: p["desired"].update({"default/x": {"a": 1}}), "desired.default/x.a: must be string"),
    "options-string": (lambda p: p["options"].update(target="x"), "options.target: must be array"),
    "inputs-null": (lambda p: p.update(inputs=None), "inputs: must be object, not null"),
    "manifest-path-number": (lambda p: p["manifest"].update(path=5), "manifest.path: must be string"),
    "targets-number": (lambda p: p["targets"].update(default=5), "targets.default: must be string"),
    "left-out-negative": (lambda p: p.update(leftOut=-1), "leftOut: fails minimum 0"),
    "missing-stack": (lambda p: p.pop("stack"), "'stack' is a required property"),
    "deep-value": (lambda p: p["changes"][0].update(id=json.loads(_deep(500))), "changes[0].id: must be"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_saved_plan_is_one_clear_error_before_any_request(cli, db, case):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    saved = json.loads((cli.cwd / "plan.json").read_text())
    change, expected = MALFORMED[case]
    change(saved)
    (cli.cwd / "plan.json").write_text(json.dumps(saved))
    db.clear_requests()
    for output in ("text", "json"):
        proc = cli.run("apply", "plan.json", "-o", output)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        shown = proc.stdout + proc.stderr
        assert "plan.json is not a valid saved plan" in shown and expected in shown, shown
        assert "internal error" not in shown and "Traceback" not in shown
    assert db.requests() == [] and db.instances() == []


@pytest.mark.parametrize("where", ["top", "field"])
def test_a_saved_plan_nested_too_deeply_is_a_clear_error(cli, db, where):
    nested = _deep(DEEP)
    head = '{"kind": "provisioner-plan", "formatVersion": 1, '
    text = head + (f'"x": {nested}}}' if where == "top" else f'"changes": [{{"diff": {nested}}}]}}')
    (cli.cwd / "plan.json").write_text(text)
    proc = cli.run("apply", "plan.json")
    assert proc.returncode == 1, proc.stderr
    assert "plan.json is not a valid saved plan" in proc.stderr and "nested too deeply" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert db.requests() == []


def test_a_saved_plan_over_the_size_cap_is_refused_with_the_limit(cli, db):
    manifest = write(cli.cwd, "m.yaml", manifest_text(count=1))
    assert cli.run("plan", manifest, "--out", "plan.json").returncode == 0
    proc = cli.run("apply", "plan.json", "--max-file-bytes", "1000")
    assert proc.returncode == 1 and "plan.json" in proc.stderr and "1000" in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert [r for r in db.requests() if r["method"] != "GET"] == []


def test_the_saved_plan_schema_knows_every_action_and_diff_operation():
    from provisioner.engine.diff import DiffOp
    from provisioner.engine.plan import ACTIONS
    from provisioner.manifest.elements import builtin_schemas

    schema = json.loads(builtin_schemas().joinpath("saved-plan.schema.json").read_text(encoding="utf-8"))
    assert schema["$defs"]["change"]["properties"]["action"]["enum"] == [str(a) for a in ACTIONS]
    assert schema["$defs"]["fieldChange"]["properties"]["op"]["enum"] == [str(o) for o in DiffOp]
