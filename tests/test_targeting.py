"""``--target`` and ``--exclude``: plan and apply touch only the selected instances, prune included.

Real CLI against the emulator; assertions on the emulator's rows and request log.
"""

from __future__ import annotations

import pytest
from conftest import manifest_text, write
from safety_helpers import Api, by_name, writes

PREFIX = "/elements/api-v2/instances"
CRM = """
  - name: crm-{n}
    element: dynamicscrmadfs
    tags: [crm]
    configuration:
      user.username: crm-admin
      user.password: crm-pw-{n}
      dynamics.tenant: {tenant}.crm.dynamics.com
"""


def manifest(helpdesks: int = 2, crms: int = 2, tenant: str = "acme", company: str = "acme") -> str:
    text = manifest_text(count=helpdesks).replace("company: acme", f"company: {company}")
    return text.rstrip("\n") + "".join(CRM.format(n=i, tenant=tenant) for i in range(crms)).rstrip("\n") + "\n"


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def test_target_glob_applies_only_the_matching_instances_and_warns(cli, db):
    path = write(cli.cwd, "m.yaml", manifest())
    proc = cli.run("apply", path, "--target", "helpdesk-*")
    assert proc.returncode == 0, proc.stderr
    assert "--target/--exclude left out 2 declared instance(s)" in proc.stderr
    assert sorted(by_name(db)) == ["helpdesk-0", "helpdesk-1"]
    proc = cli.run("apply", path, "--target", "element=dynamicscrmadfs", "--exclude", "crm-1")
    assert proc.returncode == 0, proc.stderr
    assert "left out 3 declared instance(s)" in proc.stderr
    assert sorted(by_name(db)) == ["crm-0", "helpdesk-0", "helpdesk-1"]


def test_prune_with_target_and_exclude_never_acts_outside_the_selection(cli, db):
    path = write(cli.cwd, "m.yaml", manifest(helpdesks=3, crms=3))
    assert cli.run("apply", path).returncode == 0
    ids = {n: r["id"] for n, r in by_name(db).items()}
    write(cli.cwd, "m.yaml", manifest(helpdesks=1, crms=1, tenant="globex", company="globex"))
    db.clear_requests()
    proc = cli.run("apply", path, "--prune", "--target", "tag=helpdesk", "--exclude", "helpdesk-2")
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 declared instance(s)" in proc.stderr  # crm-0
    assert sorted(writes(db)) == sorted(
        [("PUT", f"{PREFIX}/{ids['helpdesk-0']}"), ("DELETE", f"{PREFIX}/{ids['helpdesk-1']}")]
    )
    rows = by_name(db)
    assert sorted(rows) == ["crm-0", "crm-1", "crm-2", "helpdesk-0", "helpdesk-2"]
    assert rows["crm-0"]["configuration"]["dynamics.tenant"] == "acme.crm.dynamics.com"  # left out: untouched
    db.clear_requests()
    assert cli.run("apply", path, "--prune", "--exclude", "tag=helpdesk").returncode == 0
    assert sorted(m for m, _ in writes(db)) == ["DELETE", "DELETE", "PUT"]
    assert sorted(by_name(db)) == ["crm-0", "helpdesk-0", "helpdesk-2"]


def test_duplicates_of_a_left_out_instance_are_not_cleaned_up(cli, db, api):
    path = write(cli.cwd, "m.yaml", manifest(helpdesks=2, crms=0))
    assert cli.run("apply", path).returncode == 0
    original = by_name(db)["helpdesk-1"]
    api(
        "POST",
        "/instances",
        json={
            "name": "helpdesk-1",
            "element": {"key": "connectwisehd"},
            "tags": original["tags"],
            "configuration": original["configuration"],
        },
    )
    db.clear_requests()
    assert cli.run("apply", path, "--exclude", "helpdesk-1").returncode == 0
    assert writes(db) == [] and len(db.instances()) == 3
    assert cli.run("apply", path, "--target", "helpdesk-1").returncode == 0
    assert [m for m, _ in writes(db)] == ["DELETE"] and len(db.instances()) == 2


def test_plan_with_target_shows_only_the_selection(cli, db):
    path = write(cli.cwd, "m.yaml", manifest())
    code, plan = cli.json("plan", path, "--target", "crm-0")
    assert code == 0
    assert [c["name"] for c in plan["changes"]] == ["crm-0"]
    assert any("left out 3 declared instance(s)" in w for w in plan["warnings"])


@pytest.mark.parametrize("pattern", ["owner=me", "element=", ""])
def test_a_malformed_pattern_is_a_usage_error_before_any_request(cli, db, pattern):
    path = write(cli.cwd, "m.yaml", manifest())
    proc = cli.run("plan", path, "--target", pattern)
    assert proc.returncode == 1
    assert "error: --target" in proc.stderr and "element=KEY or tag=T" in proc.stderr
    assert db.requests() == []
