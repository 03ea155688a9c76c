"""Run GitHub Actions workflows and GitLab CI pipelines as their platforms would, for the subset we use.

GitHub: ``${{ ... }}`` expressions (context lookups, string literals, ``==``, ``!=``, ``&&``), a
composite action's steps with its inputs and defaults, ``$GITHUB_OUTPUT`` files turned into step
outputs, the action's outputs mapped from its steps. GitLab: ``include: project/local`` read from this
repository, ``extends:`` (hashes merge deeply, everything else is replaced), ``!reference`` tags,
``variables:`` expanded, and a job's ``before_script`` and ``script`` run in one shell with errexit.
Steps or script lines that install the package can be skipped, for tests that put the checkout's
``provisioner`` on PATH instead.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ACTION_REF = re.compile(r"^OWNER/REPO@v(?P<version>.+)$")
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
            outputs[key] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        key, _, value = line.partition("=")
        outputs[key] = value
        i += 1
    return outputs


def run_shell(script: str, env: dict, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


class GitHubRunner:
    """One job's steps, in order; ``uses: OWNER/REPO@v...`` runs this repository's action.yml."""

    def __init__(self, env: dict, workdir: Path, temp: Path, secrets: dict,
                 skip: Callable[[dict], bool] = lambda step: False):
        self.env, self.workdir, self.temp, self.secrets, self.skip = env, workdir, temp, secrets, skip
        self.logs: list[subprocess.CompletedProcess] = []
        self.summary = temp / "step_summary.md"

    def context(self, workflow_env: dict, steps: dict, inputs: dict | None = None) -> dict:
        return {"env": workflow_env, "secrets": self.secrets, "runner": {"temp": str(self.temp)},
                "steps": steps, "inputs": inputs or {}, "github": {"action_path": str(REPO)}}

    def run_job(self, workflow: dict, job: str) -> dict:
        base = self.context({}, {})
        workflow_env = {k: str(expand(v, base)) for k, v in (workflow.get("env") or {}).items()}
        steps: dict[str, dict] = {}
        for step in workflow["jobs"][job]["steps"]:
            ctx = self.context(workflow_env, steps)
            if not condition(step, ctx):
                continue
            uses = step.get("uses", "")
            if uses.startswith("actions/"):
                continue
            outputs = (self.run_action(step, ctx, workflow_env) if ACTION_REF.match(uses)
                       else self.run_step(step, ctx, workflow_env))
            if step.get("id"):
                steps[step["id"]] = {"outputs": outputs}
        return steps

    def run_step(self, step: dict, ctx: dict, extra_env: dict, workdir: Path | None = None) -> dict:
        output_file = self.temp / f"github_output_{len(self.logs)}"
        output_file.write_text("")
        env = {**self.env, **extra_env, **{k: str(expand(v, ctx)) for k, v in (step.get("env") or {}).items()},
               "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(self.summary),
               "RUNNER_TEMP": str(self.temp), "GITHUB_ACTION_PATH": str(REPO)}
        cwd = workdir or self.workdir
        if step.get("working-directory"):
            cwd = cwd / expand(step["working-directory"], ctx)
        proc = run_shell(expand(step["run"], ctx), env, cwd)
        self.logs.append(proc)
        proc.check_returncode()
        return read_github_output(output_file)

    def run_action(self, step: dict, ctx: dict, workflow_env: dict) -> dict:
        action = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
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
        variables[key] = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: variables.get(m.group(1) or m.group(2), ""),
                                str(value))
    return variables
