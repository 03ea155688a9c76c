"""The GitHub Action's step (action.yml runs it): one provisioner command, as a pipeline step.

Inputs arrive in the environment: INPUT_COMMAND, INPUT_MANIFEST, INPUT_INPUTS (files separated by
newlines or spaces), INPUT_ARGS (extra arguments, shell-quoted), INPUT_OUTPUTS_FILE, INPUT_PLAN_FILE.
It writes the step outputs ``exitcode``, ``changes`` (plan), ``drift`` (drift), ``healthy`` (check),
``plan-file`` (plan, when saved; an absolute path) and ``outputs-file`` (apply, output) to
``$GITHUB_OUTPUT``, and the Markdown report of plan, apply, drift and check to ``$GITHUB_STEP_SUMMARY``.

The reviewed-plan flow: ``plan`` with a plan file runs ``plan --out FILE`` (the saved plan holds no secret
and no token: safe as an artifact); ``apply`` with a plan file runs ``apply FILE``, which executes exactly
that plan or refuses (exit 1) if an instance it touches changed since (drift elsewhere: a warning).

Exit codes: the step fails when the command exits non-zero, except ``plan`` with changes pending (2).
``drift`` exits 2 when something changed behind provisioner's back: the step fails, so a scheduled job
notifies (``continue-on-error: true`` and the ``drift`` output, for workflows that would rather not).
``check`` does the same when an instance is not healthy (``--ping`` in ``args`` pings each one too).

Secrets: the command's stdout and stderr are captured; every token in the outputs file is announced
with ``::add-mask::`` first, and only then is anything printed, so no token can reach the log unmasked.
The ``output`` command's document (it holds tokens) goes to the outputs file and is never printed.
Standard library only: it runs with the python the provisioner was installed into.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

COMMANDS = ("validate", "plan", "apply", "destroy", "output", "drift", "check")
WITH_OUTPUTS_FILE = ("apply", "output")
WITH_PLAN_FILE = ("plan", "apply")
WITH_SUMMARY = ("plan", "apply", "drift", "check")
PASSING = {"plan": (0, 2)}  # exit codes that do not fail the step (default: 0 only)


def problem(command: str, manifest: str, plan_file: str) -> str | None:
    """Why the inputs cannot run, or None."""
    if command not in COMMANDS:
        return f"command must be one of {', '.join(COMMANDS)} (got {command!r})"
    if plan_file and command not in WITH_PLAN_FILE:
        return f"plan-file is for plan (saves the plan) and apply (executes it), not {command}"
    if command == "apply" and plan_file:
        if not os.path.isfile(plan_file):
            return (
                f"plan-file {plan_file!r} does not exist: download the plan job's artifact first "
                "(actions/download-artifact)"
            )
        return None
    if not manifest:
        return f"manifest must be set for {command}" + (" (or plan-file, the saved plan)" if command == "apply" else "")
    return None


def arguments(command: str, manifest: str, outputs_file: str, plan_file: str) -> list[str]:
    args = [command, plan_file if command == "apply" and plan_file else manifest]
    for path in os.environ.get("INPUT_INPUTS", "").split():
        args += ["--inputs", path]
    args += shlex.split(os.environ.get("INPUT_ARGS", ""))
    if command == "plan":
        args += ["--detailed-exitcode", "--output", "markdown"] + (["--out", plan_file] if plan_file else [])
    elif command == "apply":
        args += ["--outputs", outputs_file, "--output", "markdown"]
    elif command in ("drift", "check"):
        args += ["--output", "markdown"]
    elif command == "destroy":
        args += ["--yes"]
    elif command == "output":
        args += ["--format", "json"]
    return args


def tokens_in(document: str) -> list[str]:
    """Every token of an outputs document (invalid or empty text: none)."""
    try:
        instances = json.loads(document).get("instances", {})
    except (ValueError, AttributeError):
        return []
    found = [entry.get("token") for entry in instances.values() if isinstance(entry, dict)]
    return [t for t in found if isinstance(t, str) and t]


def mask(tokens: list[str]) -> None:
    for token in dict.fromkeys(tokens):
        for form in dict.fromkeys((token, json.dumps(token)[1:-1])):
            sys.stdout.write(f"::add-mask::{form}\n")
    sys.stdout.flush()


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def append(variable: str, text: str) -> None:
    target = os.environ.get(variable)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text)


def masked_stdout(command: str, proc: subprocess.CompletedProcess, outputs_file: str) -> str:
    """Announce every token with ::add-mask:: and return what may be printed of stdout."""
    if command == "output":  # its stdout is the tokens: to the file, never to the log
        if proc.returncode == 0:
            write_private(outputs_file, proc.stdout)
        mask(tokens_in(proc.stdout))
        return ""
    if command == "apply" and os.path.exists(outputs_file):
        mask(tokens_in(Path(outputs_file).read_text(encoding="utf-8")))
    return proc.stdout


def step_outputs(command: str, code: int, outputs_file: str, plan_file: str) -> dict[str, str]:
    results = {"exitcode": str(code)}
    if command == "plan":
        results["changes"] = "true" if code == 2 else "false"
        saved = plan_file and code in (0, 2) and os.path.isfile(plan_file)
        results["plan-file"] = os.path.abspath(plan_file) if saved else ""  # absolute: for upload-artifact
    if command == "drift":
        results["drift"] = "true" if code == 2 else "false"
    if command == "check":
        results["healthy"] = "true" if code == 0 else "false"
    if command in WITH_OUTPUTS_FILE:
        results["outputs-file"] = outputs_file
    return results


def main() -> int:
    command = os.environ.get("INPUT_COMMAND", "").strip()
    manifest = os.environ.get("INPUT_MANIFEST", "").strip()
    plan_file = os.environ.get("INPUT_PLAN_FILE", "").strip()
    wrong = problem(command, manifest, plan_file)
    if wrong:
        print(f"::error::{wrong}")
        append("GITHUB_OUTPUT", "exitcode=1\n")
        return 1
    default_file = Path(os.environ.get("RUNNER_TEMP") or ".", "provisioner-outputs.json")
    outputs_file = os.environ.get("INPUT_OUTPUTS_FILE") or str(default_file)
    for path in (plan_file if command == "plan" else "", outputs_file if command in ("apply", "output") else ""):
        if path and os.path.dirname(path):  # the action names these files: it makes their directory
            os.makedirs(os.path.dirname(path), exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", *arguments(command, manifest, outputs_file, plan_file)],
        capture_output=True,
        text=True,
    )
    stdout = masked_stdout(command, proc, outputs_file)
    sys.stdout.write(stdout)
    sys.stdout.flush()
    sys.stderr.write(proc.stderr)
    sys.stderr.flush()
    if command in WITH_SUMMARY and stdout:
        append("GITHUB_STEP_SUMMARY", stdout)
    results = step_outputs(command, proc.returncode, outputs_file, plan_file)
    append("GITHUB_OUTPUT", "".join(f"{key}={value}\n" for key, value in results.items()))
    return 0 if proc.returncode in PASSING.get(command, (0,)) else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
