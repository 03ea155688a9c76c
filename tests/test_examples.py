"""Every example is validated and applied against the emulator; applied twice, the second plan is empty.

The pipeline examples are not just parsed: their shell steps run verbatim, in order, against the
emulator, so a pipeline that stops working fails here first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, USER_SECRET
from pipelines import GitHubRunner, gitlab_config, gitlab_job_script, gitlab_variables, load_gitlab, run_shell

from provisioner import __version__

EXAMPLES = REPO / "examples"
MANIFESTS = {
    "quickstart.yaml": [],
    "customers/manifest.yaml": ["--inputs", str(EXAMPLES / "customers" / "customers.yaml")],
}


def test_every_example_manifest_is_covered():
    found = set()
    for path in EXAMPLES.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if "apiVersion: provisioner/v1" in text:
            found.add(path.relative_to(EXAMPLES).as_posix())
    assert found == set(MANIFESTS)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_example_validates_applies_and_converges(name, cli, db):
    manifest, extra = EXAMPLES / name, MANIFESTS[name]
    assert cli.run("validate", manifest, *extra).returncode == 0
    first = cli.run("apply", manifest, *extra, "--outputs", "tokens.json")
    assert first.returncode == 0, first.stdout + first.stderr
    created = db.instances()
    assert created and all(r["tags"] for r in created)
    db.clear_requests()
    second = cli.run("apply", manifest, *extra)
    assert second.returncode == 0
    assert [r["method"] for r in db.requests()] == ["GET"]
    assert cli.run("plan", manifest, *extra, "--detailed-exitcode").returncode == 0
    assert db.instances() == created


def test_readme_main_command_works_twice_with_no_account(tmp_path):
    """The README's first command, as a new user runs it: --local, nothing set, twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CE_", "CW_", "DYNAMICS_"))}
    env["NO_COLOR"] = "1"
    command = ["python", "-m", "provisioner", "apply", str(EXAMPLES / "quickstart.yaml"), "--local"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "2 created" in first.stdout
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0
    assert "Apply: no changes, the instances match the manifest. 1 request, 0 retries." in second.stdout
    assert (tmp_path / ".provisioner" / "emulator.db").exists()


def _pipeline_env(cli, tmp_path: Path) -> dict:
    """The checkout's provisioner on PATH (as the installed one would be), run from a repository's root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "provisioner"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m provisioner \"$@\"\n")
    shim.chmod(0o755)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    return {**cli.env, "PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}"}


def _installs(text: str) -> bool:
    return "pip install" in text


def test_github_actions_example_runs_validate_plan_apply(cli, db, tmp_path):
    """The workflow as GitHub runs it: its steps, and the action's own steps for `uses: OWNER/REPO@v...`.
    Only the action's install step is left out here (tests/test_install.py runs it)."""
    workflow = yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())
    secrets = {"CE_USER_SECRET": cli.env["CE_USER_SECRET"], "CE_ORGANIZATION_SECRET": cli.env["CE_ORGANIZATION_SECRET"],
               "CW_PASSWORD": "pipeline-cw-password", "DYNAMICS_PASSWORD": "pipeline-dyn-password"}
    runner = GitHubRunner(_pipeline_env(cli, tmp_path), tmp_path, tmp_path, secrets,
                          skip=lambda step: _installs(step.get("run", "")))
    steps = runner.run_job(workflow, "plan")
    assert steps["plan"]["outputs"] == {"exitcode": "2", "changes": "true", "outputs-file": ""}
    assert "| create | 2 |" in runner.summary.read_text()
    steps = runner.run_job(workflow, "apply")
    assert steps["apply"]["outputs"]["exitcode"] == "0"
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    assert not (tmp_path / "tokens.json").exists()  # delivered, then removed by the workflow's last step
    log = "".join(p.stdout + p.stderr for p in runner.logs)
    for row in db.instances():
        assert f"::add-mask::{row['token']}" in log
        assert log.count(row["token"]) == log.count(f"::add-mask::{row['token']}")
    assert runner.run_job(workflow, "plan")["plan"]["outputs"]["changes"] == "false"


def test_gitlab_ci_example_runs_validate_plan_apply(cli, db, tmp_path):
    """The pipeline as GitLab resolves it (include, extends, !reference), each job's script in one shell."""
    config = gitlab_config(EXAMPLES / "pipelines" / "gitlab-ci.yml")
    env = {**_pipeline_env(cli, tmp_path), "CI_PROJECT_DIR": str(tmp_path),
           "CW_PASSWORD": "pipeline-cw-password", "DYNAMICS_PASSWORD": "pipeline-dyn-password"}
    logs = []
    for job in config["stages"]:
        allowed = (0, *config[job].get("allow_failure", {}).get("exit_codes", []))
        proc = run_shell(gitlab_job_script(config[job], skip=_installs), gitlab_variables(config, config[job], env),
                         tmp_path)
        assert proc.returncode in allowed, f"{job}\n{proc.stdout}\n{proc.stderr}"
        logs.append(proc.stdout + proc.stderr)
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    plan_md = (tmp_path / "provisioner-plan.md").read_text()
    assert "| create | 2 |" in plan_md and USER_SECRET not in plan_md
    assert not (tmp_path / ".provisioner-outputs.json").exists()  # delivered, then removed
    assert not any(row["token"] in "".join(logs) for row in db.instances())


def test_every_pipeline_example_installs_a_pinned_version():
    """No `pip install .` in a user's repository: the action and the template pin the released version."""
    for path in (EXAMPLES / "pipelines").iterdir():
        assert "pip install ." not in path.read_text()
    workflow = yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())
    refs = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "OWNER/REPO" in s.get("uses", "")]
    assert refs and all(ref == f"OWNER/REPO@v{__version__}" for ref in refs)
    include = load_gitlab(EXAMPLES / "pipelines" / "gitlab-ci.yml")["include"]
    assert include == [{"project": "OWNER/REPO", "ref": f"v{__version__}",
                        "file": "ci/gitlab/provisioner.gitlab-ci.yml"}]
