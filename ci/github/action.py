"""The GitHub Action's step (action.yml runs it): one provisioner command, as a pipeline step.

Inputs arrive in the environment: INPUT_COMMAND, INPUT_MANIFEST, INPUT_INPUTS (files separated by
newlines or spaces), INPUT_ARGS (extra arguments, shell-quoted), INPUT_OUTPUTS_FILE. It writes the step
outputs ``exitcode``, ``changes`` (plan) and ``outputs-file`` (apply, output) to ``$GITHUB_OUTPUT``, and
the Markdown report of plan and apply to ``$GITHUB_STEP_SUMMARY``.

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

COMMANDS = ("validate", "plan", "apply", "destroy", "output")
WITH_OUTPUTS_FILE = ("apply", "output")


def arguments(command: str, outputs_file: str) -> list[str]:
    args = [command, os.environ["INPUT_MANIFEST"]]
    for path in os.environ.get("INPUT_INPUTS", "").split():
        args += ["--inputs", path]
    args += shlex.split(os.environ.get("INPUT_ARGS", ""))
    if command == "plan":
        args += ["--detailed-exitcode", "--output", "markdown"]
    elif command == "apply":
        args += ["--outputs", outputs_file, "--output", "markdown"]
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


def main() -> int:
    command = os.environ.get("INPUT_COMMAND", "").strip()
    if command not in COMMANDS or not os.environ.get("INPUT_MANIFEST"):
        print(f"::error::command must be one of {', '.join(COMMANDS)} and manifest must be set (got {command!r})")
        return 1
    default_file = Path(os.environ.get("RUNNER_TEMP") or ".", "provisioner-outputs.json")
    outputs_file = os.environ.get("INPUT_OUTPUTS_FILE") or str(default_file)
    proc = subprocess.run([sys.executable, "-m", "provisioner", *arguments(command, outputs_file)],
                          capture_output=True, text=True)
    stdout = proc.stdout
    if command == "output":  # its stdout is the tokens: to the file, never to the log
        if proc.returncode == 0:
            write_private(outputs_file, stdout)
        mask(tokens_in(stdout))
        stdout = ""
    elif command == "apply" and os.path.exists(outputs_file):
        mask(tokens_in(Path(outputs_file).read_text(encoding="utf-8")))
    sys.stdout.write(stdout)
    sys.stdout.flush()
    sys.stderr.write(proc.stderr)
    sys.stderr.flush()
    if command in ("plan", "apply") and stdout:
        append("GITHUB_STEP_SUMMARY", stdout)
    results = {"exitcode": str(proc.returncode)}
    if command == "plan":
        results["changes"] = "true" if proc.returncode == 2 else "false"
    if command in WITH_OUTPUTS_FILE:
        results["outputs-file"] = outputs_file
    append("GITHUB_OUTPUT", "".join(f"{key}={value}\n" for key, value in results.items()))
    return 0 if proc.returncode == 0 or (command == "plan" and proc.returncode == 2) else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
