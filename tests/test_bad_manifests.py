"""A corpus of bad manifests, each run through the real CLI with ``validate`` and with ``plan``.

Each directory under ``tests/bad-manifests/`` is one problem: ``manifest.yaml`` (plus any template
or inputs file it needs) and ``expected.yaml``::

    exit: 1                      # the exit code
    args: [--set, x]             # optional extra command-line arguments
    env: {CW_PASSWORD: ...}      # optional extra environment
    problems: 1                  # optional: the number of "error:" lines on stderr
    stderr_contains: [...]       # exact substrings: file:line, instance=..., key path, message, hint
    stderr_excludes: [...]       # never in stdout or stderr (secret values, file contents)

``plan`` must fail exactly as ``validate`` does, before any request reaches the emulator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import Cli

CORPUS = Path(__file__).resolve().parent / "bad-manifests"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())
COMMANDS = ("validate", "plan")
KEYS = {"exit", "args", "env", "problems", "stderr_contains", "stderr_excludes"}


def expected_of(case: str) -> dict:
    data = yaml.safe_load((CORPUS / case / "expected.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{case}/expected.yaml is not a mapping"
    assert set(data) <= KEYS, f"{case}/expected.yaml: unknown keys {set(data) - KEYS}"
    return data


def run_case(cli: Cli, tmp_path: Path, case: str, command: str, *extra: str):
    """Copy the case to a scratch directory and run the CLI there on manifest.yaml."""
    work = tmp_path / "case"
    work.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CORPUS / case, work)
    expected = expected_of(case)
    runner = Cli(work, cli.env)
    env = {k: str(v) for k, v in (expected.get("env") or {}).items()}
    return runner.run(command, "manifest.yaml", *map(str, expected.get("args") or []), *extra, env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def mismatches(proc, expected: dict) -> list[str]:
    """Every way the run differs from the expectation (empty when it matches)."""
    out = []
    both = proc.stdout + proc.stderr
    if "exit" in expected and proc.returncode != expected["exit"]:
        out.append(f"exit code {proc.returncode}, expected {expected['exit']}")
    for text in ("Traceback", "internal error"):
        if text in both:
            out.append(f"{text!r} in the output")
    for wanted in expected.get("stderr_contains") or []:
        if wanted not in proc.stderr:
            out.append(f"stderr lacks: {wanted!r}")
    for unwanted in expected.get("stderr_excludes") or []:
        if unwanted in both:
            out.append(f"output contains: {unwanted!r}")
    if "problems" in expected and len(error_lines(proc.stderr)) != expected["problems"]:
        out.append(f"{len(error_lines(proc.stderr))} error line(s), expected {expected['problems']}")
    return out


def report(case: str, command: str, proc, expected: dict, problems: list[str]) -> str:
    return (
        f"\ncase {case} ({command}):\n  "
        + "\n  ".join(problems)
        + f"\n--- expected ---\n{yaml.safe_dump(expected, allow_unicode=True, sort_keys=False)}"
        + f"--- actual: exit {proc.returncode} ---\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


def test_corpus_is_complete():
    for path in CORPUS.iterdir():
        assert (path / "manifest.yaml").is_file() and (path / "expected.yaml").is_file(), path.name
    assert len(CASES) >= 35


@pytest.mark.parametrize("case", CASES)
def test_bad_manifest_is_refused_with_its_message(case, cli, db, tmp_path):
    """validate and plan: the same refusal, and zero requests."""
    expected = expected_of(case)
    runs = {command: run_case(cli, tmp_path / command, case, command) for command in COMMANDS}
    failures = []
    for command, proc in runs.items():
        problems = mismatches(proc, expected)
        if proc.stdout != "":
            problems.append("stdout is not empty (a refused manifest prints nothing there in text mode)")
        if problems:
            failures.append(report(case, command, proc, expected, problems))
    assert not failures, "".join(failures)
    assert runs["plan"].stderr == runs["validate"].stderr.replace("validate", "plan")
    assert db.requests() == [], "plan sent requests for a bad manifest"


def test_every_problem_of_a_file_is_reported_in_one_run(cli, db, tmp_path):
    proc = run_case(cli, tmp_path, "several-problems", "validate")
    lines = error_lines(proc.stderr)
    assert len(lines) == 5, proc.stderr
    located = [line.split(" ", 2)[1] for line in lines]
    assert located == [
        "manifest.yaml:6",
        "manifest.yaml:10",
        "manifest.yaml:17",
        "manifest.yaml:19",
        "manifest.yaml:20",
    ], proc.stderr
    assert "5 problems found" in proc.stderr


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_json_output_lists_every_problem_with_its_location(command, cli, db, tmp_path):
    proc = run_case(cli, tmp_path, "several-problems", command, "--output", "json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is False and document["command"] == command and document["formatVersion"] == 1
    problems = document["problems"]
    assert len(problems) == 5, json.dumps(problems, indent=2)
    for p in problems:
        assert {"file", "line", "instance", "path", "message", "hint", "severity"} <= set(p), p
        assert p["file"] == "manifest.yaml" and isinstance(p["line"], int) and p["severity"] == "error"
    assert [p["line"] for p in problems] == [6, 10, 17, 19, 20]
    unknown = next(p for p in problems if p["line"] == 10)
    assert unknown == {
        **unknown,
        "instance": "helpdesk",
        "path": "configuration.helpdesk.connectwise.compnay",
        "message": "unknown key 'helpdesk.connectwise.compnay'",
        "hint": "did you mean 'helpdesk.connectwise.company'?",
    }
    element = next(p for p in problems if p["line"] == 19)
    assert element["instance"] == "other" and element["path"] == "element"
    assert element["message"] == "unknown element 'salesforce'"
    assert "connectwisehd" in element["hint"]
    assert db.requests() == []
