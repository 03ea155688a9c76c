"""Every command's --help, as a newcomer reads it: whole sentences, no word cut by the wrapping, the
environment variables named, options only where they mean something. Also `schema manifest` and the
shell completion scripts click generates."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, base_env

from provisioner.cli.main import cli

COMMANDS = sorted(cli.commands)
API_COMMANDS = ("plan", "apply", "destroy", "output")
WIDTHS = (80, 95, 110)  # 80: the width click assumes without a terminal


def _help(*args: str, columns: int = 80) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", *args, "--help"],
        env={**base_env(), "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_no_word_is_cut_by_the_wrapping(command):
    """The same words at every width: a word broken across lines (mid-word or at a hyphen) differs."""
    args = (command,) if command else ()
    words = {width: _help(*args, columns=width).split() for width in WIDTHS}
    assert words[80] == words[95] == words[110]
    assert not [line for line in _help(*args).splitlines() if len(line) > 80]


def test_the_command_list_shows_whole_first_sentences():
    text = _help()
    listing = text.split("Commands:")[1].split("\n\n")[0]
    entries = {name: " ".join(e.split()) for name, e in re.findall(r"(?m)^  (\S+) +(.*(?:\n {4,}.*)*)", listing)}
    assert sorted(entries) == COMMANDS
    assert entries["apply"] == "Make the live instances match the manifest, and deliver their tokens."
    for name, entry in entries.items():
        command = cli.commands[name]
        first = command.short_help or " ".join(command.help.split("\n\n")[0].split()).split(". ")[0]
        assert entry == first.rstrip(".") + ".", name
        assert not entry.endswith(("e.g.", "i.e.")), name  # click takes "e.g. " for a sentence's end
    assert "_PROVISIONER_COMPLETE=bash_source" in text


@pytest.mark.parametrize("command", API_COMMANDS)
def test_api_commands_name_their_environment(command):
    text = _help(command)
    for variable in (
        "CE_USER_SECRET",
        "CE_ORGANIZATION_SECRET",
        "CE_API_URL",
        "PROVISIONER_FINGERPRINT_KEY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "REQUESTS_CA_BUNDLE",
        "NO_COLOR",
    ):
        assert variable in text, variable
    assert "Trace every HTTP request" in text


def test_validate_offers_no_http_trace_and_says_it_needs_no_credentials():
    text = _help("validate")
    assert "HTTP" not in text and "--local" not in text and "--timeout" not in text
    assert "No credentials are needed" in " ".join(text.split())
    assert "env.NAME" in text


def test_emulator_names_its_environment():
    text = _help("emulator")
    for variable in ("CE_USER_SECRET", "CE_ORGANIZATION_SECRET", "PROVISIONER_EMULATOR_FAULTS"):
        assert variable in text


def test_plan_prune_says_what_would_be_deleted_and_apply_prune_deletes():
    plan = " ".join(_help("plan").split())
    assert "--prune Also plan the deletion of instances" in plan
    assert "--prune Delete" not in plan
    assert "--prune Delete instances the stack owns" in " ".join(_help("apply").split())


def test_markdown_is_offered_only_where_it_means_something():
    for command in ("plan", "apply", "drift"):
        assert "[text|json|markdown]" in _help(command)
    for command in ("validate", "destroy", "output"):
        assert "markdown" not in _help(command)


def test_schema_manifest_prints_the_packaged_schema_with_its_stable_id():
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", "schema", "manifest"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["$id"] == "https://cloud-elements-provisioner.dev/schemas/manifest/v1.json"
    assert proc.stdout == (REPO / "schemas" / "manifest.schema.json").read_text(encoding="utf-8")
    bad = subprocess.run(
        [sys.executable, "-m", "provisioner", "schema", "nosuch"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "manifest" in bad.stderr


@pytest.mark.parametrize(
    "shell,marker",
    [("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files --command provisioner")],
)
def test_shell_completion_scripts_are_generated(shell, marker):
    """The commands the README gives: _PROVISIONER_COMPLETE={shell}_source provisioner."""
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base_env(), "_PROVISIONER_COMPLETE": f"{shell}_source"},
    )
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout and "_PROVISIONER_COMPLETE" in proc.stdout


def test_completion_completes_command_names():
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base_env(), "_PROVISIONER_COMPLETE": "bash_complete", "COMP_WORDS": "provisioner pl", "COMP_CWORD": "1"},
    )
    assert proc.stdout.strip() == "plain,plan"


def test_render_help_offers_no_http_trace():
    text = " ".join(_help("render").split())
    assert "HTTP" not in text and "Trace" not in text and "--local" not in text
    assert "No credentials are needed" in text and "env.NAME" in text


@pytest.mark.parametrize("command", [("schemas",), ("schemas", "pull"), ("schemas", "list")])
def test_schemas_help_lists_only_the_variables_it_reads(command):
    text = _help(*command)
    for variable in ("CE_USER_SECRET", "CE_ORGANIZATION_SECRET", "CE_API_URL", "HTTPS_PROXY", "REQUESTS_CA_BUNDLE"):
        assert variable in text, variable
    assert "env.NAME" not in text and "manifest reads" not in text and "PROVISIONER_FINGERPRINT_KEY" not in text
