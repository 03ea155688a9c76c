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
from conftest import ORG_SECRET, REPO, USER_SECRET
from pipelines import GitHubRunner, GitLabRunner, gitlab_config, load_gitlab
from safety_helpers import Api

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
    """End to end: ``python -m provisioner`` in its own process, as a user runs it."""
    manifest, extra = EXAMPLES / name, MANIFESTS[name]
    assert cli.run_process("validate", manifest, *extra).returncode == 0
    first = cli.run_process("apply", manifest, *extra, "--outputs", "tokens.json")
    assert first.returncode == 0, first.stdout + first.stderr
    created = db.instances()
    assert created and all(r["tags"] for r in created)
    db.clear_requests()
    second = cli.run_process("apply", manifest, *extra)
    assert second.returncode == 0
    assert [r["method"] for r in db.requests()] == ["GET"]
    assert cli.run_process("plan", manifest, *extra, "--detailed-exitcode").returncode == 0
    assert db.instances() == created


def test_readme_main_command_works_twice_with_no_account(tmp_path):
    """The README's first command, as a new user runs it: --local, nothing set, twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CE_", "CW_", "DYNAMICS_"))}
    env["NO_COLOR"] = "1"
    env["PYTHONPATH"] = str(REPO)  # the checkout stands in for the installed package (tests/test_install.py)
    command = ["python", "-m", "provisioner", "apply", str(EXAMPLES / "quickstart.yaml"), "--local"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "2 created" in first.stdout
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0
    assert "Apply: no changes, the instances match the manifest. 1 request, 0 retries." in second.stdout
    assert (tmp_path / ".provisioner" / "emulator.db").exists()


SECRETS = {"CW_PASSWORD": "pipeline-cw-password", "DYNAMICS_PASSWORD": "pipeline-dyn-password"}
PUSH = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}
MERGE_REQUEST = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_DEFAULT_BRANCH": "main"}
SCHEDULE = {"CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}


def _pipeline_env(cli, tmp_path: Path) -> dict:
    """The checkout's provisioner on PATH, as the installed one would be."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "provisioner"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m provisioner "$@"\n')
    shim.chmod(0o755)
    return {**cli.env, "PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}"}


def _checkout(directory: Path) -> Path:
    """A fresh clone of a user's repository: the example manifests at examples/, nothing else."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "examples").symlink_to(EXAMPLES)
    return directory


def _installs(text: str) -> bool:
    return "pip install" in text


def _log(logs) -> str:
    return "".join(p.stdout + p.stderr for p in logs)


def _change_behind_the_back(db, emulator) -> None:
    """Someone edits an instance in the console (a stand-in goes for its sealed secret, as a person
    re-entering it would): the nightly drift job must notice, and a saved plan must go stale."""
    row = next(r for r in db.instances() if r["name"] == "helpdesk-staging")
    Api(emulator.url).put_changed(row, **{"helpdesk.connectwise.company": "edited-by-hand"})


# ------------------------------------------------------------------------------------------- GitHub
def _workflow() -> dict:
    return yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())


def _github_run(cli, tmp_path: Path, run: str, event: str, secrets: dict | None = None) -> GitHubRunner:
    """One workflow run (its own artifact store and job summary) for ``event``; jobs in fresh checkouts."""
    given = {
        "CE_USER_SECRET": cli.env["CE_USER_SECRET"],
        "CE_ORGANIZATION_SECRET": cli.env["CE_ORGANIZATION_SECRET"],
        **SECRETS,
        **(secrets or {}),
    }
    temp = tmp_path / run
    temp.mkdir()
    return GitHubRunner(
        _pipeline_env(cli, tmp_path), temp, temp, given, event=event, skip=lambda step: _installs(step.get("run", ""))
    )


def _github_job(runner: GitHubRunner, workflow: dict, job: str) -> dict:
    """The job as GitHub runs it: only if its ``if:`` holds, in a fresh checkout, with a summary of its own."""
    assert runner.should_run(workflow, job), job
    runner.workdir = _checkout(runner.temp / f"checkout-{len(list(runner.temp.glob('checkout-*')))}-{job}")
    runner.summary.write_text("")
    return runner.run_job(workflow, job)


def _jobs_for(runner: GitHubRunner, workflow: dict) -> list[str]:
    return [job for job in workflow["jobs"] if runner.should_run(workflow, job)]


def test_github_actions_example_runs_validate_plan_apply_and_drift(cli, db, tmp_path, emulator):
    """The workflow as GitHub runs it: its steps, the action's own steps for `uses: OWNER/REPO@v...`, the
    plan job's artifact carried to the apply job. Only the action's install step is left out here
    (tests/test_install.py runs it)."""
    workflow = _workflow()
    assert workflow[True]["schedule"] == [{"cron": "17 5 * * *"}]  # PyYAML reads the key `on` as True
    review = _github_run(cli, tmp_path, "pull-request", "pull_request")
    steps = _github_job(review, workflow, "plan")
    assert steps["plan"]["outputs"] == {
        "exitcode": "2",
        "changes": "true",
        "drift": "",
        "healthy": "",
        "plan-file": str(review.workdir / "plan.json"),
        "outputs-file": "",
    }
    assert "| create | 2 |" in review.summary.read_text()
    saved = (review.artifacts / "plan" / "plan.json").read_text()
    assert '"kind": "provisioner-plan"' in saved
    for secret in (*SECRETS.values(), USER_SECRET, ORG_SECRET):
        assert secret not in saved + review.summary.read_text() + _log(review.logs)
    assert _jobs_for(review, workflow) == ["plan"] and db.instances() == []

    merge = _github_run(cli, tmp_path, "push", "push")
    _github_job(merge, workflow, "plan")
    assert _jobs_for(merge, workflow) == ["plan", "apply"]
    steps = _github_job(merge, workflow, "apply")  # a fresh checkout: plan.json comes from the artifact
    assert steps["apply"]["outputs"]["exitcode"] == "0"
    assert "| created | 2 |" in merge.summary.read_text()
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    assert not (merge.temp / "tokens.json").exists()  # delivered, then removed by the workflow's last step
    log = _log(merge.logs)
    for row in db.instances():
        assert f"::add-mask::{row['token']}" in log
        assert log.count(row["token"]) == log.count(f"::add-mask::{row['token']}")

    again = _github_run(cli, tmp_path, "push-again", "push")
    assert _github_job(again, workflow, "plan")["plan"]["outputs"]["changes"] == "false"
    assert _jobs_for(again, workflow) == ["plan"]  # nothing to apply

    nightly = _github_run(cli, tmp_path, "schedule", "schedule")
    assert _jobs_for(nightly, workflow) == ["drift", "health"]
    db.clear_requests()
    _github_job(nightly, workflow, "drift")
    assert nightly.last_outputs == {"exitcode": "0", "drift": "false"}
    assert "No drift: the 2 declared instance(s) match" in nightly.summary.read_text()
    _change_behind_the_back(db, emulator)
    db.clear_requests()
    with pytest.raises(subprocess.CalledProcessError):  # drift fails the job, which notifies
        _github_job(nightly, workflow, "drift")
    assert nightly.last_outputs == {"exitcode": "2", "drift": "true"}
    summary = nightly.summary.read_text()
    assert "#### `drift` `changed` `helpdesk-staging`" in summary
    assert '| configuration.helpdesk.connectwise.company | "edited-by-hand" | "acme" | drift |' in summary
    assert {r["method"] for r in db.requests()} == {"GET"}

    _github_job(nightly, workflow, "health")  # the scheduled health job, with --ping
    assert nightly.last_outputs == {"exitcode": "0", "healthy": "true"}
    assert "All healthy (pinged): 2 healthy." in nightly.summary.read_text()
    db.refuse_credentials(next(r["id"] for r in db.instances() if r["name"] == "crm-staging"))
    with pytest.raises(subprocess.CalledProcessError):  # not healthy fails the job, which notifies
        _github_job(nightly, workflow, "health")
    assert nightly.last_outputs == {"exitcode": "2", "healthy": "false"}
    assert "| crm-staging | dynamicscrmadfs |" in nightly.summary.read_text()
    assert "--reauthenticate crm-staging" in nightly.summary.read_text()
    assert {r["method"] for r in db.requests()} == {"GET"}


def test_github_actions_apply_refuses_a_plan_that_went_stale(cli, db, tmp_path, emulator):
    workflow = _workflow()
    first = _github_run(cli, tmp_path, "first", "push")
    for job in ("plan", "apply"):
        _github_job(first, workflow, job)
    rotated = _github_run(cli, tmp_path, "rotated", "push", {"CW_PASSWORD": "a-new-password-after-review"})
    _github_job(rotated, workflow, "plan")
    assert "| update | 1 |" in rotated.summary.read_text()
    _change_behind_the_back(db, emulator)  # after the review, before the approval
    before = {r["name"]: r for r in db.instances()}
    db.clear_requests()
    with pytest.raises(subprocess.CalledProcessError):
        _github_job(rotated, workflow, "apply")
    assert rotated.last_outputs["exitcode"] == "1"
    assert "changed on the server since the plan" in rotated.logs[-1].stderr
    assert {r["method"] for r in db.requests()} == {"GET"}
    assert {r["name"]: r for r in db.instances()} == before


# ------------------------------------------------------------------------------------------- GitLab
def _gitlab(cli, tmp_path: Path, secrets: dict | None = None) -> GitLabRunner:
    config = gitlab_config(EXAMPLES / "pipelines" / "gitlab-ci.yml")
    env = {**_pipeline_env(cli, tmp_path), **SECRETS, **(secrets or {})}
    return GitLabRunner(config, env, tmp_path / "gitlab", _checkout, skip=_installs)


def _gitlab_pipeline(runner: GitLabRunner, variables: dict, expected: dict[str, str]) -> dict:
    """Every job of the pipeline for ``variables`` (a manual job as started by hand); exit codes by job."""
    assert runner.jobs(variables) == expected
    codes = {}
    for job in expected:
        proc = runner.run_job(job, variables)
        codes[job] = proc.returncode
        allowed = (0, *runner.config[job].get("allow_failure", {}).get("exit_codes", []))
        assert proc.returncode in allowed, f"{job}\n{proc.stdout}\n{proc.stderr}"
    return codes


def test_gitlab_ci_example_runs_validate_plan_apply_and_drift(cli, db, tmp_path, emulator):
    """The pipeline as GitLab resolves it (include, extends, !reference, rules), each job in a fresh
    checkout with the artifacts of its needs, its script in one shell."""
    runner = _gitlab(cli, tmp_path)
    jobs = {"validate": "on_success", "plan": "on_success"}
    assert _gitlab_pipeline(runner, MERGE_REQUEST, jobs) == {"validate": 0, "plan": 2}
    assert db.instances() == []
    codes = _gitlab_pipeline(runner, PUSH, {**jobs, "apply": "manual"})
    assert codes == {"validate": 0, "plan": 2, "apply": 0}
    assert sorted(r["name"] for r in db.instances()) == ["crm-staging", "helpdesk-staging"]
    plan_md = (runner.artifacts["plan"] / "provisioner-plan.md").read_text()
    saved = (runner.artifacts["plan"] / "plan.json").read_text()
    assert "| create | 2 |" in plan_md and '"kind": "provisioner-plan"' in saved
    assert "apply" not in runner.artifacts  # the tokens never become an artifact
    log = "".join(p.stdout + p.stderr for p in [runner.run_job("plan", PUSH)])
    assert "No changes" in log
    for secret in (*SECRETS.values(), USER_SECRET, ORG_SECRET, *(r["token"] for r in db.instances())):
        assert secret not in plan_md + saved + log

    assert runner.jobs(SCHEDULE) == {"drift": "on_success", "health": "on_success"}
    db.clear_requests()
    clean = runner.run_job("drift", SCHEDULE)
    assert clean.returncode == 0 and "No drift" in clean.stdout
    _change_behind_the_back(db, emulator)
    db.clear_requests()
    found = runner.run_job("drift", SCHEDULE)
    assert found.returncode == 2, found.stderr  # not allowed to fail: the job fails, which notifies
    report = (runner.artifacts["drift"] / "provisioner-drift.md").read_text()
    assert '| configuration.helpdesk.connectwise.company | "edited-by-hand" | "acme" | drift |' in report
    assert {r["method"] for r in db.requests()} == {"GET"}
    assert runner.run_job("health", SCHEDULE).returncode == 0
    db.refuse_credentials(next(r["id"] for r in db.instances() if r["name"] == "helpdesk-staging"))
    unhealthy = runner.run_job("health", SCHEDULE)
    assert unhealthy.returncode == 2, unhealthy.stderr
    table = (runner.artifacts["health"] / "provisioner-check.md").read_text()
    assert "| helpdesk-staging | connectwisehd |" in table and "invalid" in table and "--reauthenticate" in table
    assert any("/hubs/helpdesk/ping" in r["path"] for r in db.requests())  # PROVISIONER_CHECK_ARGS: --ping
    assert {r["method"] for r in db.requests()} == {"GET"}


def test_gitlab_ci_apply_refuses_a_plan_that_went_stale(cli, db, tmp_path, emulator):
    _gitlab_pipeline(_gitlab(cli, tmp_path), PUSH, {"validate": "on_success", "plan": "on_success", "apply": "manual"})
    runner = _gitlab(cli, tmp_path / "rotated", {"CW_PASSWORD": "a-new-password-after-review"})
    assert runner.run_job("plan", PUSH).returncode == 2
    _change_behind_the_back(db, emulator)
    before = {r["name"]: r for r in db.instances()}
    db.clear_requests()
    refused = runner.run_job("apply", PUSH)
    assert refused.returncode == 1
    assert "changed on the server since the plan" in refused.stderr
    assert {r["method"] for r in db.requests()} == {"GET"}
    assert {r["name"]: r for r in db.instances()} == before


def test_gitlab_ci_apply_without_the_plan_artifact_fails_before_any_request(cli, db, tmp_path):
    runner = _gitlab(cli, tmp_path)
    proc = runner.run_job("apply", PUSH)
    assert proc.returncode == 1 and "plan.json, the saved plan of the plan job, is missing" in proc.stderr
    assert db.requests() == []


def test_every_pipeline_example_installs_from_the_repository_at_main():
    """No `pip install .` in a user's repository, and no release tag that does not exist: the examples
    name `main` (no release is tagged yet), and the GitLab example installs the ref it includes."""
    for path in (EXAMPLES / "pipelines").iterdir():
        assert "pip install ." not in path.read_text()
    workflow = yaml.safe_load((EXAMPLES / "pipelines" / "github-actions.yml").read_text())
    refs = [s["uses"] for job in workflow["jobs"].values() for s in job["steps"] if "OWNER/REPO" in s.get("uses", "")]
    assert refs and all(ref == "OWNER/REPO@main" for ref in refs)
    example = load_gitlab(EXAMPLES / "pipelines" / "gitlab-ci.yml")
    assert example["include"] == [
        {"project": "OWNER/REPO", "ref": "main", "file": "ci/gitlab/provisioner.gitlab-ci.yml"}
    ]
    assert example["variables"]["PROVISIONER_REF"] == example["include"][0]["ref"]
    assert example["variables"]["PROVISIONER_REPOSITORY"] == "$CI_SERVER_URL/OWNER/REPO"
