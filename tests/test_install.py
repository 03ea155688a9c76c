"""Installed as a user outside this repository installs it (SLOW: a few minutes).

A copy of the working tree is committed to a fresh git repository on branch main (a fresh clone, as the
README says), the README's install command runs verbatim in it, into a fresh virtual environment, with
the dependencies from the package index; the installed command then runs from a directory that is not
a checkout. The pipelines install as their platforms would: the GitHub Action's install step from a
clone of the action at a ref (``$GITHUB_ACTION_PATH``), the GitLab template's install line from the
repository archive GitLab serves, here from a local HTTP server on loopback; the release workflow's
build job (``python -m build``, ``twine check``, the wheel in a fresh venv) runs its steps verbatim; and
pre-commit installs and runs the hook from the repository. Nothing here imports the checkout:
PYTHONPATH is not set.
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
from pipelines import GitHubRunner, gitlab_config, gitlab_variables

from provisioner import __version__

pytestmark = pytest.mark.xdist_group("install")  # one worker builds the virtual environment once

NAME = "cloud-elements-provisioner"
REF_PATTERNS = [  # every place a pipeline or a command names a ref of this repository
    r"OWNER/REPO@([^\s\"'`]+)",
    r"\bref: ([^\s#]+)",
    r"\brev: ([^\s#]+)",
    r"PROVISIONER_REF: ([^\s#]+)",
]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def _run(args: list[str], env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _env() -> dict:
    return {k: v for k, v in base_env().items() if k != "PYTHONPATH"}


def _venv(path: Path, env: dict) -> dict:
    """A fresh virtual environment, first on PATH: its ``python`` is the one a step runs."""
    _run([sys.executable, "-m", "venv", str(path)], env, path.parent)
    return {**env, "PATH": f"{path / 'bin'}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(path)}


def _direct_url(venv: Path) -> dict | None:
    site = next(venv.glob("lib/python*/site-packages"))
    found = list(site.glob("cloud_elements_provisioner-*.dist-info/direct_url.json"))
    return json.loads(found[0].read_text()) if found else None


def _git_copy(source: Path) -> Path:
    """A copy of the working tree committed to a fresh git repository at ``source`` (branch main)."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        _run([*GIT, *args], _env(), source)
    return source


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A git copy of the working tree (branch main), its wheel, and a fresh venv with the README's install."""
    root = tmp_path_factory.mktemp("install")
    source = _git_copy(root / "source")
    env = _env()
    wheels = root / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(wheels)]
    _run([*pip_wheel, str(source)], env, root)
    venv = root / "venv"
    env = {**_venv(venv, env), "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run(["bash", "-e", "-c", _readme_install_command()], env, source)
    home = root / "home"  # a directory that is not a checkout
    home.mkdir()
    return {"root": root, "source": source, "wheels": wheels, "venv": venv, "env": env, "home": home}


def _readme_install_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(pip install [^\n]+)\n```", install).group(1)


def test_every_ref_is_main_or_a_tag_that_exists_and_no_version_is_pinned_by_default():
    """No release is tagged or published yet: the README, the docs, the examples, the action and the
    template name `main` (or a tag this repository has), and the index version is opt-in (empty)."""
    assert _readme_install_command() == "pip install ."
    tags = subprocess.run(["git", "tag", "--list"], cwd=REPO, capture_output=True, text=True).stdout.split()
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
        refs = [ref for pattern in REF_PATTERNS for ref in re.findall(pattern, text)]
        assert set(refs) <= {"main", *tags}, (path, refs)
        pins = re.findall(r"cloud-elements-provisioner==([^\s\"'`]+)", text)
        assert set(pins) <= {"<version>", "$PROVISIONER_VERSION", "${PROVISIONER_VERSION}"}, (path, pins)
        found += len(refs)
    assert found >= 15
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["inputs"]["version"]["default"] == ""
    assert (
        yaml.safe_load((REPO / "ci" / "gitlab" / "provisioner.gitlab-ci.yml").read_text())["variables"][
            "PROVISIONER_VERSION"
        ]
        == ""
    )


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


def test_the_git_form_of_the_readme_installs_a_branch(installed):
    env, home, source = installed["env"], installed["home"], installed["source"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = re.search(
        r'pip install "(cloud-elements-provisioner @ git\+https://github.com/OWNER/REPO@main)"', readme
    )
    requirement = documented.group(1).replace("https://github.com/OWNER/REPO", f"file://localhost{source}")
    _run(["python", "-m", "pip", "install", "--force-reinstall", "--no-deps", requirement], env, home)
    assert _direct_url(installed["venv"])["vcs_info"]["requested_revision"] == "main"
    assert _run(["provisioner", "--version"], env, home).stdout.strip() == f"provisioner, version {__version__}"


def test_the_action_installs_itself_from_its_clone_at_the_ref_and_runs(installed, cli, db, tmp_path):
    """As GitHub runs `uses: OWNER/REPO@main`: a clone of the action at that ref under _actions/, a python
    without the package, the action's steps verbatim (its install step included)."""
    clone = tmp_path / "_actions" / "OWNER" / "REPO" / "main"
    _run(["git", "clone", "-q", "--branch", "main", str(installed["source"]), str(clone)], _env(), tmp_path)
    venv = tmp_path / "runner-python"
    env = {**_venv(venv, _env()), **{k: v for k, v in cli.env.items() if k.startswith("CE_")}}
    write(cli.cwd, "provisioner.yaml", manifest_text())
    runner = GitHubRunner(env, cli.cwd, tmp_path, {}, action_path=clone)
    step = {"uses": "OWNER/REPO@main", "with": {"command": "apply", "manifest": "provisioner.yaml"}}
    outputs = runner.run_action(step, runner.context({}, {}), {})
    assert outputs["exitcode"] == "0"
    assert "pip install" in runner.logs[0].args[-1] and "Successfully installed" in runner.logs[0].stdout
    assert _direct_url(venv)["url"] == clone.as_uri()  # installed from the action's checkout
    log = runner.logs[-1].stdout
    assert len(db.instances()) == 2
    for row in db.instances():
        assert log.count(row["token"]) == log.count(f"::add-mask::{row['token']}") == 1
    _run(["python", "-m", "pip", "uninstall", "-y", NAME], env, tmp_path)
    pinned = GitHubRunner({**env, "PIP_FIND_LINKS": str(installed["wheels"])}, cli.cwd, tmp_path, {}, action_path=clone)
    step = {
        "uses": "OWNER/REPO@main",
        "with": {"command": "validate", "manifest": "provisioner.yaml", "version": __version__},
    }
    assert pinned.run_action(step, pinned.context({}, {}), {})["exitcode"] == "0"
    assert _direct_url(venv) is None  # a version from the index (here: a local find-links), not the checkout


def test_the_gitlab_template_installs_the_archive_of_the_included_ref(installed, tmp_path):
    """As GitLab runs the example's jobs: the template's variables and install line, an archive URL of
    the project at PROVISIONER_REF, as GitLab serves it (here a local HTTP server, on loopback)."""
    served = tmp_path / "served"
    archive = served / "OWNER" / "REPO" / "-" / "archive" / "main" / "REPO-main.tar.gz"
    archive.parent.mkdir(parents=True)
    git_archive = ["git", "archive", "--format=tar.gz", "--prefix=REPO-main/", "-o", str(archive), "main"]
    _run(git_archive, _env(), installed["source"])
    with subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(served)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        try:
            port = re.search(r" port (\d+) ", server.stdout.readline()).group(1)
            config = gitlab_config(REPO / "examples" / "pipelines" / "gitlab-ci.yml")
            venv = tmp_path / "job-python"
            env = {**_venv(venv, _env()), "CI_SERVER_URL": f"http://127.0.0.1:{port}"}
            job = config["plan"]
            line = job["before_script"][0]
            proc = _run(["sh", "-e", "-c", line], gitlab_variables(config, job, env), tmp_path)
        finally:
            server.terminate()
    assert "Successfully installed" in proc.stdout
    assert _direct_url(venv)["url"] == f"http://127.0.0.1:{port}/OWNER/REPO/-/archive/main/REPO-main.tar.gz"
    version = _run(["provisioner", "--version"], env, tmp_path).stdout.strip()
    assert version == f"provisioner, version {__version__}"
    _run(["python", "-m", "pip", "uninstall", "-y", NAME], env, tmp_path)
    pinned = {**env, "PROVISIONER_VERSION": __version__, "PIP_FIND_LINKS": str(installed["wheels"])}
    _run(
        ["sh", "-e", "-c", line], gitlab_variables(config, job, pinned) | {"PROVISIONER_VERSION": __version__}, tmp_path
    )
    assert _direct_url(venv) is None and _run(["provisioner", "--version"], env, tmp_path).stdout.strip() == version


@pytest.mark.xdist_group("release")  # needs no installed venv: runs beside the install group
def test_the_release_workflow_builds_checks_and_tests_the_distributions(tmp_path):
    """The release workflow's build job, its shell steps verbatim in a clean checkout: python -m build,
    twine check, the wheel in a fresh venv outside the checkout (publishing needs the index: not here)."""
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    publish = workflow["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"} and publish["needs"] == "build"
    assert publish["steps"][-1]["uses"] == "pypa/gh-action-pypi-publish@release/v1"
    assert "startsWith(github.ref, 'refs/tags/v')" in publish["if"]
    checkout = tmp_path / "checkout"
    _run(["git", "clone", "-q", str(_git_copy(tmp_path / "source")), str(checkout)], _env(), tmp_path)
    env = _venv(tmp_path / "runner-python", _env())  # build and twine: from the test extra, or the index
    env = {**env, "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": f"v{__version__}", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for step in workflow["jobs"]["build"]["steps"]:
        if "run" in step:
            _run(["bash", "-e", "-c", step["run"]], env, checkout)
    built = sorted(p.name for p in (checkout / "dist").iterdir())
    assert built == [
        f"cloud_elements_provisioner-{__version__}-py3-none-any.whl",
        f"cloud_elements_provisioner-{__version__}.tar.gz",
    ]
    wrong_tag = {**env, "GITHUB_REF_NAME": "v9.9.9"}
    test_step = next(s for s in workflow["jobs"]["build"]["steps"] if "fresh virtual environment" in s.get("name", ""))
    proc = subprocess.run(
        ["bash", "-e", "-c", test_step["run"]], cwd=checkout, env=wrong_tag, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1 and f"tag v9.9.9 does not name the package version {__version__}" in proc.stdout


def test_pre_commit_installs_and_runs_the_hook(installed, tmp_path):
    """pre-commit reads .pre-commit-hooks.yaml from the repository at main, installs it and runs it."""
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
        "main",
        "--all-files",
    ]
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "provisioner.yaml: valid (2 instances)" in proc.stdout
    assert "deploy/manifest.yaml" in proc.stdout and "nosuchelement" in proc.stdout
    assert "values.yaml" not in proc.stdout


def test_init_works_from_the_installed_package(installed, tmp_path):
    """init reads the pipeline examples shipped in the package, outside any checkout."""
    env = installed["env"]
    project = tmp_path / "project"
    project.mkdir()
    _run(["provisioner", "init", "connectwisehd", "--ci", "gitlab"], env, project)
    assert "PROVISIONER_MANIFEST: provisioner.yaml" in (project / ".gitlab-ci.yml").read_text()
