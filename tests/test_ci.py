"""The GitHub Action, the GitLab CI template and the pre-commit hook, read as their platforms read them
and run as a pipeline runs them (``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY`` set) against the emulator.

The checkout's provisioner stands in for the installed one here; tests/test_install.py runs the
action's install step itself in a fresh virtual environment.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ORG_SECRET, REPO, USER_SECRET, manifest_text, write
from pipelines import GitHubRunner, gitlab_config, gitlab_job_script, gitlab_variables, load_gitlab, run_shell
from safety_helpers import Api

ACTION = REPO / "action.yml"
TEMPLATE = REPO / "ci" / "gitlab" / "provisioner.gitlab-ci.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
CANARY = "canary-cw-password-31337"


def _shim_env(cli, tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "provisioner"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m provisioner "$@"\n')
    shim.chmod(0o755)
    return {**cli.env, "PATH": f"{bin_dir}{os.pathsep}{cli.env['PATH']}", "CW_PASSWORD": CANARY}


def _runner(cli, tmp_path: Path) -> GitHubRunner:
    return GitHubRunner(
        _shim_env(cli, tmp_path), cli.cwd, tmp_path, {}, skip=lambda step: "pip install" in step.get("run", "")
    )


def _action(runner: GitHubRunner, **given: str) -> dict:
    step = {"uses": "OWNER/REPO@main", "with": given}
    return runner.run_action(step, runner.context({}, {}), {})


def _manifest(cli, count: int = 2) -> str:
    text = manifest_text(count=count).replace("pw-{n}", "x")
    write(cli.cwd, "provisioner.yaml", text)
    return "provisioner.yaml"


def _log(runner: GitHubRunner) -> str:
    return "".join(p.stdout + p.stderr for p in runner.logs)


# ------------------------------------------------------------------------------------- action.yml, read
def test_action_yml_is_a_composite_action_with_the_documented_interface():
    action = yaml.safe_load(ACTION.read_text())
    assert {"name", "description", "inputs", "outputs", "runs"} <= set(action)
    assert {"command", "manifest", "plan-file", "inputs", "version", "args", "outputs-file"} <= set(action["inputs"])
    assert {"exitcode", "changes", "drift", "plan-file", "outputs-file"} <= set(action["outputs"])
    for command in ("validate", "plan", "apply", "destroy", "output", "drift"):
        assert command in action["inputs"]["command"]["description"]
    assert all("description" in spec for spec in [*action["inputs"].values(), *action["outputs"].values()])
    assert action["inputs"]["version"]["default"] == ""  # the action's own checkout, the ref in uses:
    assert action["runs"]["using"] == "composite"
    for step in action["runs"]["steps"]:
        assert ("uses" in step) != ("run" in step)
        if "run" in step:
            assert step["shell"] == "bash"
    install = next(s for s in action["runs"]["steps"] if "pip install" in s.get("run", ""))
    assert 'pip install --disable-pip-version-check "$GITHUB_ACTION_PATH"' in install["run"]
    assert '"cloud-elements-provisioner==${PROVISIONER_VERSION}"' in install["run"]
    assert (REPO / "ci" / "github" / "action.py").exists()


# ------------------------------------------------------------------------------------- action, run
def test_action_plan_writes_the_markdown_summary_and_exposes_the_exit_code(cli, db, tmp_path):
    runner = _runner(cli, tmp_path)
    outputs = _action(runner, command="plan", manifest=_manifest(cli))
    assert outputs == {
        "exitcode": "2",
        "changes": "true",
        "drift": "",
        "healthy": "",
        "plan-file": "",
        "outputs-file": "",
    }
    summary = runner.summary.read_text()
    assert summary.startswith("### provisioner plan: stack `tests`")
    assert "| create | 2 |" in summary and "(sensitive)" in summary
    assert CANARY not in summary + _log(runner) and USER_SECRET not in summary + _log(runner)
    assert db.instances() == []


def test_action_apply_masks_every_token_before_printing_anything(cli, db, tmp_path):
    runner = _runner(cli, tmp_path)
    (cli.cwd / "out").mkdir()  # a missing directory is refused, never created
    outputs = _action(runner, command="apply", manifest=_manifest(cli, 3), **{"outputs-file": "out/tokens.json"})
    assert outputs["exitcode"] == "0"
    path = cli.cwd / "out" / "tokens.json"
    assert outputs["outputs-file"] == "out/tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stdout = runner.logs[-1].stdout
    tokens = [row["token"] for row in db.instances()]
    assert len(tokens) == 3
    lines = stdout.splitlines()
    mask_lines = [i for i, line in enumerate(lines) if line.startswith("::add-mask::")]
    assert mask_lines == list(range(len(mask_lines)))  # the masks come first, before any other line
    for token in tokens:
        assert f"::add-mask::{token}" in lines
        assert all(token not in line for line in lines if not line.startswith("::add-mask::"))
        assert token not in runner.logs[-1].stderr
    assert "### provisioner apply: stack `tests`" in runner.summary.read_text()


def test_action_output_command_writes_the_file_and_prints_no_token(cli, db, tmp_path):
    runner = _runner(cli, tmp_path)
    manifest = _manifest(cli)
    _action(runner, command="apply", manifest=manifest)
    outputs = _action(runner, command="output", manifest=manifest)
    assert outputs["outputs-file"] == str(tmp_path / "provisioner-outputs.json")
    document = Path(outputs["outputs-file"]).read_text()
    for row in db.instances():
        assert row["token"] in document
        assert runner.logs[-1].stdout.count(row["token"]) == 1  # its ::add-mask:: line only


def test_action_passes_inputs_files_and_args_and_fails_on_errors(cli, db, tmp_path):
    write(
        cli.cwd,
        "m.yaml",
        """
        apiVersion: provisioner/v1
        stack: tests
        inputs: {company: none}
        instances:
          - name: "helpdesk-{{ inputs.company }}-{{ inputs.tier }}"
            element: connectwisehd
            configuration:
              helpdesk.connectwise.username: u
              helpdesk.connectwise.password: p
              helpdesk.connectwise.server.url: api-na.myconnectwise.net
              helpdesk.connectwise.company: "{{ inputs.company }}"
    """,
    )
    write(cli.cwd, "a.yaml", "company: acme\n")
    write(cli.cwd, "b.yaml", "tier: gold\n")
    runner = _runner(cli, tmp_path)
    outputs = _action(runner, command="apply", manifest="m.yaml", inputs="a.yaml\nb.yaml", args="--set tier=silver")
    assert outputs["exitcode"] == "0"
    assert [r["name"] for r in db.instances()] == ["helpdesk-acme-silver"]
    with pytest.raises(subprocess.CalledProcessError):
        _action(runner, command="plan", manifest="m.yaml")  # inputs.tier undefined: exit 1 fails the step
    assert runner.logs[-1].returncode == 1
    assert "inputs.tier" in runner.logs[-1].stderr or "tier" in runner.logs[-1].stderr
    assert "exitcode=1" in Path(sorted(tmp_path.glob("github_output_*"))[-1]).read_text()


def test_action_saves_the_plan_and_applies_exactly_that_plan(cli, db, tmp_path):
    runner = _runner(cli, tmp_path)
    manifest = _manifest(cli)
    (cli.cwd / "reviewed").mkdir()  # a missing directory is refused, never created
    planned = _action(runner, command="plan", manifest=manifest, **{"plan-file": "reviewed/plan.json"})
    assert planned["plan-file"] == str(cli.cwd / "reviewed" / "plan.json") and planned["changes"] == "true"
    saved = (cli.cwd / "reviewed" / "plan.json").read_text()
    assert '"kind": "provisioner-plan"' in saved and CANARY not in saved and USER_SECRET not in saved
    assert stat.S_IMODE((cli.cwd / "reviewed" / "plan.json").stat().st_mode) == 0o600
    db.clear_requests()
    applied = _action(runner, command="apply", **{"plan-file": "reviewed/plan.json"})
    assert applied["exitcode"] == "0" and len(db.instances()) == 2
    assert [r["method"] for r in db.requests()].count("POST") == 2
    assert "| created | 2 |" in runner.summary.read_text()
    for row in db.instances():
        assert f"::add-mask::{row['token']}" in runner.logs[-1].stdout


def test_action_refuses_a_missing_plan_file_and_a_plan_file_for_other_commands(cli, db, tmp_path):
    runner = _runner(cli, tmp_path)
    with pytest.raises(subprocess.CalledProcessError):
        _action(runner, command="apply", **{"plan-file": "plan.json"})
    assert "::error::plan-file 'plan.json' does not exist: download the plan job's artifact" in runner.logs[-1].stdout
    with pytest.raises(subprocess.CalledProcessError):
        _action(runner, command="drift", manifest=_manifest(cli), **{"plan-file": "plan.json"})
    assert "plan-file is for plan (saves the plan) and apply (executes it), not drift" in runner.logs[-1].stdout
    with pytest.raises(subprocess.CalledProcessError):
        _action(runner, command="apply")
    assert "manifest must be set for apply (or plan-file, the saved plan)" in runner.logs[-1].stdout
    assert runner.last_outputs == {"exitcode": "1"} and db.requests() == []


def test_action_drift_writes_the_markdown_report_and_fails_the_step_on_drift(cli, db, tmp_path, emulator):
    runner = _runner(cli, tmp_path)
    manifest = _manifest(cli)
    _action(runner, command="apply", manifest=manifest)
    runner.summary.write_text("")
    assert _action(runner, command="drift", manifest=manifest)["drift"] == "false"
    assert "No drift" in runner.summary.read_text()
    runner.env["CW_PASSWORD"] = "rotated-" + CANARY  # only pending: exit 0, the step passes
    outputs = _action(runner, command="drift", manifest=manifest)
    assert outputs["exitcode"] == "0" and "| secret | 0 | 2 |" in runner.summary.read_text()
    runner.env["CW_PASSWORD"] = CANARY
    Api(emulator.url)("DELETE", f"/instances/{db.instances()[0]['id']}")  # behind the back: missing, drift
    db.clear_requests()
    with pytest.raises(subprocess.CalledProcessError):
        _action(runner, command="drift", manifest=manifest)
    assert runner.last_outputs == {"exitcode": "2", "drift": "true"}
    assert "| missing | 1 | 0 |" in runner.summary.read_text()
    assert {r["method"] for r in db.requests()} == {"GET"}
    assert CANARY not in runner.summary.read_text() + _log(runner)


# ------------------------------------------------------------------------------------- GitLab template
def test_gitlab_template_defines_the_hidden_jobs_with_an_install_from_the_repository():
    template = load_gitlab(TEMPLATE)
    variables = template["variables"]
    assert variables["PROVISIONER_VERSION"] == variables["PROVISIONER_REPOSITORY"] == ""
    assert variables["PROVISIONER_ARCHIVE"] == "" and variables["PROVISIONER_REF"] == "main"
    for job in (".provisioner-validate", ".provisioner-plan", ".provisioner-apply", ".provisioner-drift"):
        assert template[job]["extends"] == ".provisioner" and template[job]["script"]
    assert template[".provisioner-plan"]["artifacts"]["paths"] == ["provisioner-plan.md", "plan.json"]
    assert template[".provisioner-drift"]["artifacts"]["paths"] == ["provisioner-drift.md"]
    assert "allow_failure" not in template[".provisioner-drift"]  # drift fails the job, which notifies
    install = template[".provisioner"]["before_script"][0]
    assert '"cloud-elements-provisioner==$PROVISIONER_VERSION"' in install
    assert "/-/archive/$PROVISIONER_REF/" in install
    assert template[".provisioner-plan"]["allow_failure"] == {"exit_codes": [2]}
    assert "artifacts" not in template[".provisioner-apply"]  # the tokens never become an artifact


def test_gitlab_template_install_line_names_what_to_set_when_nothing_is_set(tmp_path):
    line = load_gitlab(TEMPLATE)[".provisioner"]["before_script"][0]
    proc = subprocess.run(
        ["sh", "-e", "-c", line], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    assert proc.returncode == 1 and not proc.stdout
    assert proc.stderr.startswith(
        "error: set PROVISIONER_REPOSITORY (the project holding provisioner, e.g. $CI_SERVER_URL"
    )
    assert "or PROVISIONER_VERSION" in proc.stderr


def test_gitlab_template_jobs_run_against_the_emulator(cli, db, tmp_path):
    pipeline = write(
        tmp_path,
        "pipeline.yml",
        """
        include:
          - project: OWNER/REPO
            ref: main
            file: ci/gitlab/provisioner.gitlab-ci.yml
        variables:
          PROVISIONER_INPUTS: "none.yaml"
        validate: {extends: .provisioner-validate}
        plan: {extends: .provisioner-plan}
        apply: {extends: .provisioner-apply}
    """,
    )
    write(cli.cwd, "none.yaml", "unused: true\n")
    _manifest(cli)
    config = gitlab_config(pipeline)
    env = {**_shim_env(cli, tmp_path), "CI_PROJECT_DIR": str(cli.cwd)}
    codes, logs = {}, ""
    for job in ("validate", "plan", "apply", "plan"):
        proc = run_shell(
            gitlab_job_script(config[job], skip=lambda line: "pip install" in line),
            gitlab_variables(config, config[job], env),
            cli.cwd,
        )
        codes.setdefault(job, []).append(proc.returncode)
        logs += proc.stdout + proc.stderr
    assert codes == {"validate": [0], "plan": [2, 0], "apply": [0]}
    outputs = cli.cwd / ".provisioner-outputs.json"
    assert stat.S_IMODE(outputs.stat().st_mode) == 0o600
    for row in db.instances():
        assert row["token"] in outputs.read_text() and row["token"] not in logs
    assert CANARY not in logs and ORG_SECRET not in logs
    assert "No changes" in (cli.cwd / "provisioner-plan.md").read_text()


# ------------------------------------------------------------------------------------- pre-commit
def test_pre_commit_hook_definition_is_valid_for_pre_commit():
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(HOOKS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = yaml.safe_load(HOOKS.read_text())
    assert [h["id"] for h in hooks] == ["provisioner-validate"]
    hook = hooks[0]
    assert hook["entry"] == "provisioner validate" and hook["language"] == "python" and hook["pass_filenames"]
    files = re.compile(hook["files"])
    for name in ("provisioner.yaml", "deploy/provisioner-staging.yml", "manifest.yaml", "a/b/manifest.prod.yaml"):
        assert files.search(name), name
    exclude = re.compile(hook["exclude"])
    for name in ("values.yaml", "provisioner.json", "provisioner/x.yaml", ".gitlab-ci.yml"):
        assert not files.search(name), name
    # the GitLab template, copied where its header says, and GitHub workflows are pipelines, not manifests
    header = (REPO / "ci" / "gitlab" / "provisioner.gitlab-ci.yml").read_text()
    assert "local: ci/provisioner.gitlab-ci.yml" in header
    for name in ("ci/provisioner.gitlab-ci.yml", ".github/workflows/provisioner.yml", "provisioner.gitlab-ci.yaml"):
        assert files.search(name) and exclude.search(name), name
    for name in ("provisioner.yaml", "deploy/provisioner-staging.yml", "manifest.yaml"):
        assert not exclude.search(name), name


def test_pre_commit_hook_entry_validates_every_file_it_is_given(cli, tmp_path):
    """pre-commit appends the matching files to the entry: validate takes several, exit 1 if any fails."""
    good = write(cli.cwd, "provisioner.yaml", manifest_text())
    bad = write(cli.cwd, "deploy/manifest.yaml", manifest_text().replace("connectwisehd", "nosuchelement", 1))
    entry = yaml.safe_load(HOOKS.read_text())[0]["entry"]
    env = _shim_env(cli, tmp_path)
    ok = subprocess.run(
        [*entry.split(), str(good.relative_to(cli.cwd))], cwd=cli.cwd, env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0 and "provisioner.yaml: valid (2 instances)" in ok.stdout
    both = subprocess.run(
        [*entry.split(), "deploy/manifest.yaml", "provisioner.yaml"],
        cwd=cli.cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert both.returncode == 1
    assert "provisioner.yaml: valid (2 instances)" in both.stdout
    assert "deploy/manifest.yaml:" in both.stderr and "nosuchelement" in both.stderr
    assert bad.exists()


def test_validate_refuses_json_output_for_several_manifests(cli):
    write(cli.cwd, "a.yaml", manifest_text())
    code, document = cli.json("validate", "a.yaml", "a.yaml")
    assert code == 1 and document["error"]["message"] == "--output json takes one manifest"
