"""Installed by name, as a user outside this repository installs it (SLOW: a minute or two).

A wheel is built from a copy of the working tree, then the README's install command runs verbatim in that
copy (a fresh clone, as the README says), into a fresh virtual environment, with the dependencies from the
package index. The installed command then runs from a directory that is not a
checkout; the ``git+...@vX.Y.Z`` form is installed from a tagged local clone; the GitHub Action's install
step and the GitLab template's install line run verbatim; and pre-commit itself installs and runs the
hook from the tagged repository. Nothing here imports the checkout: PYTHONPATH is not set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, base_env, manifest_text, write
from pipelines import GitHubRunner, gitlab_config

from provisioner import __version__

pytestmark = pytest.mark.xdist_group("install")  # one worker builds the virtual environment once

NAME = "cloud-elements-provisioner"
V = r"(\d[\w.]*\w|\d)"  # a version ends with a letter or digit
PIN_PATTERNS = [
    rf"cloud-elements-provisioner=={V}\b",
    rf"OWNER/REPO@v{V}\b",
    rf"\bref: v{V}\b",
    rf"\brev: v{V}\b",
    rf'PROVISIONER_VERSION: "{V}"',
    rf'\n  version:\n(?:    .*\n)*?    default: "{V}"',
    rf"cloud_elements_provisioner-{V}-py3",
    rf"# version: {V} ",
]


def _run(args: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A tagged git copy of the working tree, its wheel, and a fresh venv with the README's install."""
    root = tmp_path_factory.mktemp("install")
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    source = root / "source"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
    env = {k: v for k, v in base_env().items() if k != "PYTHONPATH"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"], ["tag", f"v{__version__}"]):
        _run([*git, *args], env, source)
    wheels = root / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(wheels),
            str(source),
        ],
        env,
        root,
    )
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, root)
    env = {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "VIRTUAL_ENV": str(venv),
    }
    command = _readme_install_command()
    _run(["bash", "-e", "-c", command], env, source)
    home = root / "home"  # a directory that is not a checkout
    home.mkdir()
    return {"root": root, "source": source, "wheels": wheels, "venv": venv, "env": env, "home": home}


def _readme_install_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(pip install [^\n]+)\n```", install).group(1)


def test_every_pinned_version_is_the_package_version():
    """One source for the version: the README, the examples, the action and the template all pin it."""
    assert _readme_install_command() == "pip install ."
    places = [
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        REPO / "action.yml",
        REPO / "ci" / "gitlab" / "provisioner.gitlab-ci.yml",
        *(REPO / "examples" / "pipelines").iterdir(),
    ]
    found = 0
    for path in places:
        text = path.read_text(encoding="utf-8")
        versions = [v for pattern in PIN_PATTERNS for v in re.findall(pattern, text)]
        assert set(versions) <= {__version__}, (path, versions)
        found += len(versions)
    assert found >= 12


def test_the_documented_install_gives_a_working_command(installed):
    env, home = installed["env"], installed["home"]
    bin_dir = installed["venv"] / "bin"
    version = _run([str(bin_dir / "provisioner"), "--version"], env, home).stdout
    assert version.strip() == f"provisioner, version {__version__}"
    shown = _run([str(bin_dir / "python"), "-m", "pip", "show", NAME], env, home).stdout
    assert f"Name: {NAME}\nVersion: {__version__}" in shown
    where = _run([str(bin_dir / "python"), "-c", "import provisioner; print(provisioner.__file__)"], env, home).stdout
    assert str(installed["venv"]) in where
    shutil.copy(REPO / "examples" / "quickstart.yaml", home / "quickstart.yaml")
    validated = _run(["provisioner", "validate", "quickstart.yaml"], env, home)
    assert "quickstart.yaml: valid (2 instances)" in validated.stdout
    first = _run(["provisioner", "apply", "quickstart.yaml", "--local"], env, home)
    assert "2 created" in first.stdout
    second = _run(["provisioner", "apply", "quickstart.yaml", "--local"], env, home)
    assert "Apply: no changes" in second.stdout
    schema = json.loads(_run(["provisioner", "schema", "manifest"], env, home).stdout)
    assert schema["$id"].endswith("/schemas/manifest/v1.json")


def test_the_git_tag_form_installs(installed):
    env, home, source = installed["env"], installed["home"], installed["source"]
    requirement = f"{NAME} @ git+file://localhost{source}@v{__version__}"  # a URL needs a host here
    _run(["python", "-m", "pip", "install", "--force-reinstall", "--no-deps", requirement], env, home)
    site = next(installed["venv"].glob("lib/python*/site-packages"))
    direct = json.loads(next(site.glob("cloud_elements_provisioner-*.dist-info/direct_url.json")).read_text())
    assert direct["vcs_info"]["requested_revision"] == f"v{__version__}"
    assert _run(["provisioner", "--version"], env, home).stdout.strip() == f"provisioner, version {__version__}"


def test_the_action_and_the_gitlab_template_install_lines_run_and_the_action_works_installed(
    installed, cli, db, tmp_path
):
    env = {**installed["env"], **{k: v for k, v in cli.env.items() if k.startswith("CE_")}}
    action = yaml.safe_load((REPO / "action.yml").read_text())
    install = next(s for s in action["runs"]["steps"] if "pip install" in s.get("run", ""))
    _run(["bash", "-e", "-c", install["run"]], {**env, "PROVISIONER_VERSION": __version__}, tmp_path)
    template = gitlab_config(REPO / "ci" / "gitlab" / "provisioner.gitlab-ci.yml")
    line = template[".provisioner"]["before_script"][0]
    _run(
        ["bash", "-e", "-c", line],
        {**env, "PROVISIONER_VERSION": template["variables"]["PROVISIONER_VERSION"]},
        tmp_path,
    )
    write(cli.cwd, "provisioner.yaml", manifest_text())
    runner = GitHubRunner(env, cli.cwd, tmp_path, {}, skip=lambda step: "pip install" in step.get("run", ""))
    step = {"uses": f"OWNER/REPO@v{__version__}", "with": {"command": "apply", "manifest": "provisioner.yaml"}}
    outputs = runner.run_action(step, runner.context({}, {}), {})
    assert outputs["exitcode"] == "0"
    log = runner.logs[-1].stdout
    for row in db.instances():
        assert log.count(row["token"]) == log.count(f"::add-mask::{row['token']}") == 1


def test_pre_commit_installs_and_runs_the_hook(installed, tmp_path):
    """pre-commit reads .pre-commit-hooks.yaml from the tagged repository, installs it and runs it."""
    project = tmp_path / "project"
    write(project, "provisioner.yaml", manifest_text())
    write(project, "deploy/manifest.yaml", manifest_text().replace("connectwisehd", "nosuchelement", 1))
    write(project, "values.yaml", "not: a manifest\n")
    env = {k: v for k, v in base_env().items() if k != "PYTHONPATH"}
    env["PRE_COMMIT_HOME"] = str(installed["root"] / "pre-commit-home")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    _run([*git, "init", "-q"], env, project)
    _run([*git, "add", "-A"], env, project)
    command = [
        sys.executable,
        "-m",
        "pre_commit",
        "try-repo",
        str(installed["source"]),
        "provisioner-validate",
        "--ref",
        f"v{__version__}",
        "--all-files",
    ]
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "provisioner.yaml: valid (2 instances)" in proc.stdout
    assert "deploy/manifest.yaml" in proc.stdout and "nosuchelement" in proc.stdout
    assert "values.yaml" not in proc.stdout
