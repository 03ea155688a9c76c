"""Run GitHub Actions workflows and GitLab CI pipelines as their platforms would, for the subset we use.

GitHub: ``${{ ... }}`` expressions (context lookups, string literals, ``==``, ``!=``, ``&&``), a job's
``if:`` for a given event (``github.event_name``) and the ``needs`` of earlier jobs, a composite action's
steps with its inputs and defaults, ``$GITHUB_OUTPUT`` files turned into step outputs, the action's and
the job's outputs mapped from their steps, and ``actions/upload-artifact`` / ``actions/download-artifact``
as a copy through one artifact store (other ``actions/*`` steps, such as checkout, are left out).
A failed step raises ``CalledProcessError``; the outputs it wrote are in ``last_outputs``.
GitLab: ``include: project/local`` read from this repository, ``extends:`` (hashes merge deeply,
everything else is replaced), ``!reference`` tags, ``variables:`` expanded, and a job's
``before_script`` and ``script`` run in one shell with errexit.
Steps or script lines that install the package can be skipped, for tests that put the checkout's
``provisioner`` on PATH instead.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ACTION_REF = re.compile(r"^OWNER/REPO@(?P<ref>.+)$")
_EXPR = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")


# ----------------------------------------------------------------------------------------------- GitHub
def evaluate(expr: str, ctx: dict) -> Any:
    expr = expr.strip()
    if "&&" in expr:
        return all(evaluate(part, ctx) for part in expr.split("&&"))
    for op in ("!=", "=="):
        if op in expr:
            left, right = (evaluate(side, ctx) for side in expr.split(op, 1))
            return (left != right) if op == "!=" else (left == right)
    if expr.startswith("'") and expr.endswith("'"):
        return expr[1:-1]
    value: Any = ctx
    for part in expr.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


def expand(text: Any, ctx: dict) -> Any:
    if not isinstance(text, str):
        return text
    return _EXPR.sub(lambda m: str(evaluate(m.group(1), ctx)), text)


def condition(step: dict, ctx: dict) -> bool:
    if "if" not in step:
        return True
    text = str(step["if"])
    match = _EXPR.fullmatch(text.strip())
    return bool(evaluate(match.group(1) if match else text, ctx))


def read_github_output(path: Path) -> dict[str, str]:
    outputs: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and "=" not in line.split("<<")[0]:
            key, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            outputs[key] = "\n".join(lines[i + 1 : end])
            i = end + 1
            continue
        key, _, value = line.partition("=")
        outputs[key] = value
        i += 1
    return outputs


def run_shell(script: str, env: dict, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class GitHubRunner:
    """One job's steps, in order; ``uses: OWNER/REPO@<ref>`` runs the action.yml of ``action_path`` (this
    checkout, or a clone of it as GitHub makes one for the ref)."""

    def __init__(
        self,
        env: dict,
        workdir: Path,
        temp: Path,
        secrets: dict,
        skip: Callable[[dict], bool] = lambda step: False,
        event: str = "push",
        action_path: Path = REPO,
    ):
        self.env, self.workdir, self.temp, self.secrets, self.skip = env, workdir, temp, secrets, skip
        self.event, self.action_path = event, action_path
        self.logs: list[subprocess.CompletedProcess] = []
        self.summary = temp / "step_summary.md"
        self.artifacts = temp / "artifacts"  # one store for the workflow run: runners sharing ``temp`` share it
        self.needs: dict[str, dict] = {}
        self.last_outputs: dict[str, str] = {}

    def context(self, workflow_env: dict, steps: dict, inputs: dict | None = None) -> dict:
        return {
            "env": workflow_env,
            "secrets": self.secrets,
            "runner": {"temp": str(self.temp)},
            "steps": steps,
            "inputs": inputs or {},
            "needs": self.needs,
            "github": {"action_path": str(self.action_path), "event_name": self.event},
        }

    def should_run(self, workflow: dict, job: str) -> bool:
        """The job's ``if:`` for this runner's event and the outputs of the jobs run before."""
        return condition(workflow["jobs"][job], self.context({}, {}))

    def run_job(self, workflow: dict, job: str) -> dict:
        """Run the job's steps (whatever its ``if:`` says: ``should_run`` tells); keep its outputs for
        the ``needs`` of later jobs."""
        base = self.context({}, {})
        workflow_env = {k: str(expand(v, base)) for k, v in (workflow.get("env") or {}).items()}
        steps: dict[str, dict] = {}
        for step in workflow["jobs"][job]["steps"]:
            ctx = self.context(workflow_env, steps)
            if not condition(step, ctx):
                continue
            uses = step.get("uses", "")
            if uses.startswith(("actions/upload-artifact@", "actions/download-artifact@")):
                self.transfer(step, ctx)
                continue
            if uses.startswith("actions/"):
                continue
            outputs = (
                self.run_action(step, ctx, workflow_env)
                if ACTION_REF.match(uses)
                else self.run_step(step, ctx, workflow_env)
            )
            if step.get("id"):
                steps[step["id"]] = {"outputs": outputs}
        final = self.context(workflow_env, steps)
        declared = workflow["jobs"][job].get("outputs") or {}
        self.needs[job] = {"outputs": {k: str(expand(v, final)) for k, v in declared.items()}}
        return steps

    def transfer(self, step: dict, ctx: dict) -> None:
        """upload-artifact copies ``path`` (one file) into the store; download-artifact copies it back
        into the working directory (or ``path``). A missing file or artifact fails the step."""
        given = {k: str(expand(v, ctx)) for k, v in (step.get("with") or {}).items()}
        store = self.artifacts / given.get("name", "artifact")
        if step["uses"].startswith("actions/upload-artifact@"):
            source = self.workdir / given.get("path", "")
            assert given.get("path") and source.is_file(), f"upload-artifact: no file at {given.get('path')!r}"
            store.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, store / source.name)
            return
        assert store.is_dir(), f"download-artifact: no artifact named {store.name!r}"
        destination = self.workdir / given.get("path", ".")
        destination.mkdir(parents=True, exist_ok=True)
        for item in store.iterdir():
            shutil.copyfile(item, destination / item.name)

    def run_step(self, step: dict, ctx: dict, extra_env: dict, workdir: Path | None = None) -> dict:
        output_file = self.temp / f"github_output_{len(self.logs)}"
        output_file.write_text("")
        env = {
            **self.env,
            **extra_env,
            **{k: str(expand(v, ctx)) for k, v in (step.get("env") or {}).items()},
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "RUNNER_TEMP": str(self.temp),
            "GITHUB_ACTION_PATH": str(self.action_path),
        }
        cwd = workdir or self.workdir
        if step.get("working-directory"):
            cwd = cwd / expand(step["working-directory"], ctx)
        proc = run_shell(expand(step["run"], ctx), env, cwd)
        self.logs.append(proc)
        self.last_outputs = read_github_output(output_file)
        proc.check_returncode()
        return self.last_outputs

    def run_action(self, step: dict, ctx: dict, workflow_env: dict) -> dict:
        action = yaml.safe_load((self.action_path / "action.yml").read_text(encoding="utf-8"))
        given = {k: str(expand(v, ctx)) for k, v in (step.get("with") or {}).items()}
        unknown = set(given) - set(action["inputs"])
        assert not unknown, f"inputs the action does not declare: {unknown}"
        inputs = {name: given.get(name, str(spec.get("default", ""))) for name, spec in action["inputs"].items()}
        steps: dict[str, dict] = {}
        for inner in action["runs"]["steps"]:
            inner_ctx = self.context(workflow_env, steps, inputs)
            if "uses" in inner or not condition(inner, inner_ctx) or self.skip(inner):
                continue
            outputs = self.run_step(inner, inner_ctx, workflow_env)
            if inner.get("id"):
                steps[inner["id"]] = {"outputs": outputs}
        final = self.context(workflow_env, steps, inputs)
        return {name: str(expand(spec["value"], final)) for name, spec in action["outputs"].items()}


# ----------------------------------------------------------------------------------------------- GitLab
class Reference(list):
    """A ``!reference [job, key, ...]`` tag, resolved after ``extends``."""


class GitLabLoader(yaml.SafeLoader):
    pass


GitLabLoader.add_constructor("!reference", lambda loader, node: Reference(loader.construct_sequence(node)))


def load_gitlab(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=GitLabLoader)  # noqa: S506 - SafeLoader subclass


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return over


def _resolve_references(value: Any, config: dict) -> Any:
    if isinstance(value, Reference):
        target: Any = config
        for key in value:
            target = target[key]
        return _resolve_references(copy.deepcopy(target), config)
    if isinstance(value, list):
        flat: list = []
        for item in value:
            resolved = _resolve_references(item, config)
            flat.extend(resolved if isinstance(item, Reference) and isinstance(resolved, list) else [resolved])
        return flat
    if isinstance(value, dict):
        return {k: _resolve_references(v, config) for k, v in value.items()}
    return value


def gitlab_config(path: Path) -> dict:
    """A pipeline file with its includes read from this repository and every job's extends resolved."""
    own = load_gitlab(path)
    config: dict = {}
    for include in own.pop("include", []) or []:
        config = _merge(config, load_gitlab(REPO / (include.get("file") or include["local"]).lstrip("/")))
    config = _merge(config, own)

    def resolved(name: str) -> dict:
        job = config[name]
        parents = job.get("extends", [])
        merged: dict = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged = _merge(merged, resolved(parent))
        return _merge(merged, {k: v for k, v in job.items() if k != "extends"})

    jobs = {name: resolved(name) for name, job in config.items() if isinstance(job, dict) and name != "variables"}
    final = {**config, **jobs}
    return {name: _resolve_references(value, final) for name, value in final.items()}


def gitlab_job_script(job: dict, skip: Callable[[str], bool] = lambda line: False) -> str:
    lines = [*job.get("before_script", []), *job.get("script", [])]
    return "set -eo pipefail\n" + "\n".join(line for line in lines if not skip(line))


def gitlab_variables(config: dict, job: dict, env: dict) -> dict:
    variables = {**env}
    for key, value in {**(config.get("variables") or {}), **(job.get("variables") or {})}.items():
        variables[key] = re.sub(
            r"\$(\w+)|\$\{(\w+)\}", lambda m: variables.get(m.group(1) or m.group(2), ""), str(value)
        )
    return variables


_CLAUSE = re.compile(r"^(\S+)\s*(==|!=)\s*(\S+)$")


def _operand(text: str, variables: dict) -> str | None:
    if text.startswith("$"):
        return variables.get(text[1:].strip("{}")) or None  # an unset or empty variable is null
    return text.strip("\"'")


def rule_when(job: dict, variables: dict) -> str | None:
    """``rules:``: the ``when`` of the first rule whose ``if`` holds (``==``, ``!=``, ``&&`` over variables
    and quoted strings); None when no rule matches (the job is not in the pipeline)."""
    for rule in job.get("rules") or [{}]:
        clauses = [_CLAUSE.match(part.strip()) for part in str(rule.get("if", "")).split("&&")] if "if" in rule else []
        assert all(clauses), f"unsupported rule {rule!r}"
        held = all(
            (_operand(c.group(1), variables) == _operand(c.group(3), variables)) == (c.group(2) == "==")
            for c in clauses
            if c
        )
        if held:
            return rule.get("when", "on_success")
    return None


class GitLabRunner:
    """Jobs of one pipeline, each in a fresh checkout (``checkout(dir)`` makes one), with the artifacts
    (``artifacts: paths``) of its ``needs`` (or of every job run before it) copied in first, as GitLab's
    runner does."""

    def __init__(
        self,
        config: dict,
        env: dict,
        root: Path,
        checkout: Callable[[Path], None],
        skip: Callable[[str], bool] = lambda line: False,
    ):
        self.config, self.env, self.root, self.checkout, self.skip = config, env, root, checkout, skip
        self.artifacts: dict[str, Path] = {}
        self.runs = 0

    def jobs(self, variables: dict) -> dict[str, str]:
        """The pipeline's jobs for these variables (``CI_PIPELINE_SOURCE`` ...), in stage order, with their
        ``when``."""
        jobs = {
            name: job
            for name, job in self.config.items()
            if isinstance(job, dict) and "script" in job and not name.startswith(".")
        }
        stages = self.config.get("stages", [])
        ordered = sorted(jobs, key=lambda n: stages.index(jobs[n].get("stage", "test")))
        chosen = {name: rule_when(jobs[name], {**self.env, **variables}) for name in ordered}
        return {name: when for name, when in chosen.items() if when is not None}

    def run_job(self, name: str, variables: dict | None = None) -> subprocess.CompletedProcess:
        job = self.config[name]
        self.runs += 1
        workdir = self.root / f"job-{self.runs}-{name}"
        workdir.mkdir(parents=True)
        self.checkout(workdir)
        for needed in job.get("needs", list(self.artifacts)):
            for item in self.artifacts[needed].iterdir() if needed in self.artifacts else ():
                shutil.copyfile(item, workdir / item.name)
        env = gitlab_variables(self.config, job, {**self.env, **(variables or {}), "CI_PROJECT_DIR": str(workdir)})
        proc = run_shell(gitlab_job_script(job, self.skip), env, workdir)
        artifacts = job.get("artifacts") or {}
        if artifacts.get("paths") and (proc.returncode == 0 or artifacts.get("when") == "always"):
            store = self.root / "artifacts" / name
            store.mkdir(parents=True, exist_ok=True)
            for path in artifacts["paths"]:
                if (workdir / path).is_file():
                    shutil.copyfile(workdir / path, store / Path(path).name)
            self.artifacts[name] = store
        return proc
