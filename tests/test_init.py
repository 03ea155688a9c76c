"""``provisioner init`` (issue 18, point 7): from nothing to a manifest that validates, in one command,
and a pipeline that runs it; never overwriting a file."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO
from pipelines import load_gitlab


def _variables(stderr: str) -> list[str]:
    return re.findall(r"(?m)^  ([A-Z][A-Z0-9_]+)  \(", stderr)


def test_init_then_validate_with_the_variables_set_passes_and_plan_creates_them(cli, db):
    made = cli.run("init", "connectwisehd", "dynamicscrmadfs")
    assert made.returncode == 0, made.stderr
    text = (cli.cwd / "provisioner.yaml").read_text()
    names = _variables(made.stderr)
    schema = yaml.safe_load((REPO / "schemas" / "elements" / "connectwisehd.json").read_text())
    for key in schema["required"]:  # every required key, each reading a variable
        assert re.search(rf'(?m)^      {re.escape(key)}: "{{{{ env\.[A-Z_]+ }}}}"$', text), key
    crm = {"dynamics.tenant", "user.username", "user.password"}  # required only for authentication.type custom
    assert all(re.search(rf'(?m)^      {re.escape(key)}: "{{{{ env\.', text) for key in crm)
    assert len(names) == len(schema["required"]) + len(crm) and all(f"env.{n} }}" in text for n in names)
    assert "# optional:" in text and "#   provisioner" not in text
    unset = cli.run("validate", "provisioner.yaml")
    assert unset.returncode == 1 and all(f"environment variable {n} is not set" in unset.stderr for n in names)
    values = {n: "https://api-na.example.net" if n.endswith("_URL") else f"value-{i}" for i, n in enumerate(names)}
    valid = cli.run("validate", "provisioner.yaml", env=values)
    assert valid.returncode == 0, valid.stderr
    assert "provisioner.yaml: valid (2 instances)" in valid.stdout
    applied = cli.run("apply", "provisioner.yaml", env=values)
    assert applied.returncode == 0, applied.stderr
    assert sorted(r["name"] for r in db.instances()) == ["connectwisehd-staging", "dynamicscrmadfs-staging"]
    password = next(v for n, v in values.items() if n.endswith("CONNECTWISE_PASSWORD"))
    assert password not in applied.stdout + applied.stderr


def test_init_twice_refuses_and_changes_nothing(cli):
    assert cli.run("init", "connectwisehd").returncode == 0
    before = (cli.cwd / "provisioner.yaml").read_text()
    again = cli.run("init", "dynamicscrmadfs", "--ci", "github")
    assert again.returncode == 1
    assert "error: provisioner.yaml already exists; init never overwrites a file" in again.stderr
    assert (cli.cwd / "provisioner.yaml").read_text() == before
    assert not (cli.cwd / ".github").exists()  # nothing written when one file is refused
    other = cli.run("init", "dynamicscrmadfs", "--out", "crm.yaml", "--ci", "github")
    assert other.returncode == 0, other.stderr
    third = cli.run("init", "connectwisehd", "--out", "third.yaml", "--ci", "github")
    assert third.returncode == 1 and ".github/workflows/provision.yml already exists" in third.stderr
    assert not (cli.cwd / "third.yaml").exists()


@pytest.mark.parametrize(("wrong", "meant"), [("connectwisedh", "connectwisehd"), ("dynamicscrm", "dynamicscrmadfs")])
def test_an_unknown_element_gets_a_did_you_mean(cli, wrong, meant):
    proc = cli.run("init", "connectwisehd", wrong)
    assert proc.returncode == 1
    assert f"error: unknown element {wrong!r} (hint: did you mean {meant!r}?" in proc.stderr
    assert "provisioner schemas pull KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (cli.cwd / "provisioner.yaml").exists()


def test_init_reads_pulled_schemas_and_the_manifest_finds_them(cli):
    assert cli.run("schemas", "pull", "sfdc", "--local", "--out", "pulled").returncode == 0
    made = cli.run("init", "sfdc", "--schemas", "pulled", "--stack", "crm-prod")
    assert made.returncode == 0, made.stderr
    text = (cli.cwd / "provisioner.yaml").read_text()
    assert 'schemas: ["pulled"]' in text and "stack: crm-prod" in text
    assert "oauth.user.refresh_token" in text.split("# optional:")[0]  # an OAuth element needs one to be created
    values = {n: "https://example.net/cb" if n.endswith("_URL") else "value-123" for n in _variables(made.stderr)}
    valid = cli.run("validate", "provisioner.yaml", env=values)
    assert valid.returncode == 0, valid.stderr
    bad = cli.run("init", "sfdc", "--schemas", "pulled", "--stack", "Crm Prod", "--out", "x.yaml")
    assert bad.returncode == 1 and "--stack 'Crm Prod' is not a valid stack name" in bad.stderr


def test_init_writes_a_github_workflow_for_the_manifest(cli):
    made = cli.run("init", "connectwisehd", "--out", "deploy.yaml", "--ci", "github")
    assert made.returncode == 0, made.stderr
    workflow = yaml.safe_load((cli.cwd / ".github" / "workflows" / "provision.yml").read_text())
    env = workflow["env"]
    assert env["MANIFEST"] == "deploy.yaml"
    names = _variables(made.stderr)
    assert {n: env[n] for n in names} == {n: f"${{{{ secrets.{n} }}}}" for n in names}
    assert not [k for k in env if k.startswith(("CW_", "DYNAMICS_"))]  # the example's own variables are gone
    assert set(workflow["jobs"]) == {"plan", "apply", "drift", "health"}


def test_init_writes_a_gitlab_pipeline_for_the_manifest(cli):
    made = cli.run("init", "dynamicscrmadfs", "--ci", "gitlab")
    assert made.returncode == 0, made.stderr
    text = (cli.cwd / ".gitlab-ci.yml").read_text()
    config = load_gitlab(cli.cwd / ".gitlab-ci.yml")
    assert config["variables"]["PROVISIONER_MANIFEST"] == "provisioner.yaml"
    assert {"validate", "plan", "apply", "drift"} <= set(config)
    header = text.split("\ninclude:")[0]
    assert all(f"#   {name}" in header for name in _variables(made.stderr))
    assert "CW_PASSWORD" not in text and "DYNAMICS_PASSWORD" not in text
