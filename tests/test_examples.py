"""Every example is validated and applied against the emulator; applied twice, the second plan is empty.

The pipeline examples are not just parsed: their shell steps run verbatim, in order, against the
emulator, so a pipeline that stops working fails here first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, USER_SECRET

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


def _run_script(script: str, env: dict, cwd: Path, allowed: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in allowed, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _pipeline_env(cli, tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "provisioner"
    shim.write_text(f"#!/bin/sh\nexec {os.sys.executable} -m provisioner \"$@\"\n")
    shim.chmod(0o755)
    (tmp_path / "examples").symlink_to(EXAMPLES)  # pipelines run from a checkout's root
    return {**cli.env, "PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}", "MANIFEST": "examples/quickstart.yaml",
            "CW_PASSWORD": "pipeline-cw-password", "DYNAMICS_PASSWORD": "pipeline-dyn-password"}


def _change_behind_the_back(db, emulator_url: str) -> None:
    """Someone edits an instance in the console: the nightly drift job must notice."""
    import requests
    from conftest import ORG_SECRET

    row = next(r for r in db.instances() if r["name"] == "helpdesk-staging")
    body = {"name": row["name"], "element": {"key": row["element"]}, "tags": row["tags"],
            "configuration": {**row["configuration"], "helpdesk.connectwise.company": "edited-by-hand"}}
    response = requests.put(f"{emulator_url}/instances/{row['id']}", json=body, timeout=10,
                            headers={"Authorization": f"User {USER_SECRET}, Organization {ORG_SECRET}"})
    assert response.status_code == 200


def _steps(workflow: dict, job: str) -> list[str]:
    return [s["run"] for s in workflow["jobs"][job]["steps"] if "run" in s and "pip install" not in s["run"]]


def test_github_actions_example_runs_validate_plan_apply_and_drift(cli, db, tmp_path, emulator):
    workflow = yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())
    assert "schedule" in workflow[True] and workflow["jobs"]["drift"]["if"] == "github.event_name == 'schedule'"
    env = _pipeline_env(cli, tmp_path)
    env["GITHUB_OUTPUT"] = str(tmp_path / "github_output")
    env["RUNNER_TEMP"] = str(tmp_path)
    for script in _steps(workflow, "plan"):
        _run_script(script, env, tmp_path)
    assert (tmp_path / "github_output").read_text().strip() == "changes=true"
    assert '"kind": "provisioner-plan"' in (tmp_path / "plan.json").read_text()  # the artifact to review
    assert db.instances() == []
    for script in _steps(workflow, "apply"):
        _run_script(script, env, tmp_path)
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    assert not (tmp_path / "tokens.json").exists()
    (tmp_path / "github_output").write_text("")
    plan_step = next(s for s in workflow["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    _run_script(plan_step["run"], env, tmp_path)
    assert (tmp_path / "github_output").read_text().strip() == "changes=false"
    [drift] = _steps(workflow, "drift")
    assert "No drift" in _run_script(drift, env, tmp_path).stdout
    _change_behind_the_back(db, emulator.url)
    db.clear_requests()
    found = _run_script(drift, env, tmp_path, allowed=(2,))
    assert "edited-by-hand" in found.stdout
    assert {r["method"] for r in db.requests()} == {"GET"}


def test_github_actions_apply_refuses_a_plan_that_went_stale(cli, db, tmp_path, emulator):
    workflow = yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())
    env = _pipeline_env(cli, tmp_path)
    env["GITHUB_OUTPUT"] = str(tmp_path / "github_output")
    env["RUNNER_TEMP"] = str(tmp_path)
    for job in ("plan", "apply"):
        for script in _steps(workflow, job):
            _run_script(script, env, tmp_path)
    env["CW_PASSWORD"] = "a-new-password-after-review"
    for script in _steps(workflow, "plan"):
        _run_script(script, env, tmp_path)
    _change_behind_the_back(db, emulator.url)  # after the review, before the apply
    db.clear_requests()
    [apply_step] = [s for s in _steps(workflow, "apply") if "apply" in s]
    refused = _run_script(apply_step, env, tmp_path, allowed=(1,))
    assert "changed on the server since the plan" in refused.stderr
    assert {r["method"] for r in db.requests()} == {"GET"}


def test_gitlab_ci_example_runs_validate_plan_apply_and_drift(cli, db, tmp_path, emulator):
    pipeline = yaml.safe_load((EXAMPLES / "pipelines" / "gitlab-ci.yml").read_text())
    env = _pipeline_env(cli, tmp_path)
    env["CI_PROJECT_DIR"] = str(tmp_path)
    for job in ("validate", "plan", "apply"):
        assert "schedule" in str(pipeline[job]["rules"])
        allowed = (0, *pipeline[job].get("allow_failure", {}).get("exit_codes", []))
        _run_script("\n".join(pipeline[job]["script"]), env, tmp_path, allowed)
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    assert USER_SECRET not in (tmp_path / "plan.json").read_text()
    assert pipeline["drift"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
    drift = "\n".join(pipeline["drift"]["script"])
    _run_script(drift, env, tmp_path)
    _change_behind_the_back(db, emulator.url)
    _run_script(drift, env, tmp_path, allowed=(2,))
