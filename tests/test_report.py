"""Text output: user text is printed as given (never read as rich markup or emoji codes), and a
run without a terminal does not even import rich (start-up time in pipelines)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from conftest import REPO, base_env

from provisioner.cli.report import StyledStream, printable
from provisioner.secret import MASK, REDACTOR


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text.encode("utf-8")  # a lone surrogate fails here, as on a real terminal
        return super().write(text)


def test_terminal_output_prints_markup_and_emoji_codes_verbatim():
    out = _Terminal()
    stream = StyledStream(out)
    stream.print("name [bold]x[/bold] :thumbs_up: :smile:", style="green")
    stream.lines([("red", "- delete [red]y[/] :fire:"), ("", "plain")])
    text = out.getvalue()
    assert "\x1b[" in text  # styled: a terminal
    assert "name [bold]x[/bold] :thumbs_up: :smile:" in text
    assert "- delete [red]y[/] :fire:" in text and "plain" in text
    assert "\N{THUMBS UP SIGN}" not in text


def test_plain_output_is_redacted_and_unstyled():
    secret = "plain-secret-Qz81x"
    REDACTOR.add(secret)
    out = io.StringIO()
    stream = StyledStream(out)
    stream.print(f"value {secret} :smile:", style="red")
    stream.lines([("green", "a"), ("", "b")])
    assert out.getvalue() == "value ******** :smile:\na\nb\n"


def test_a_run_without_a_terminal_does_not_import_rich_or_requests(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: provisioner/v1\nstack: s\ninstances: []\n")
    probe = (
        "import sys\nfrom provisioner.cli.main import main\nsys.argv = ['provisioner', 'validate', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('rich', 'requests', 'urllib3') if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(manifest)],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "valid (0 instances)" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_a_terminal_gets_our_styling_but_a_name_s_controls_escaped():
    """On a terminal (rich), colour codes are ours; a name's ESC, CR, LF, bidi override and lone
    surrogate are shown as escapes, each line stays one line."""
    out = _Terminal()
    stream = StyledStream(out)
    forged = "hd-4\x1b[2J\r\nApply: 0 created"
    stream.lines([("red", f"- delete {forged}"), ("", "  hd-3\ud800 hd-5\u202etxt")])
    stream.print("warning: hd-6\x1b]0;title\x07", style="yellow")  # print keeps only its own line breaks
    shown = out.getvalue()
    assert "\x1b[" in shown  # rich's styling went through
    assert "\x1b[2J" not in shown and "\x1b]" not in shown and "\u202e" not in shown and "\r" not in shown
    assert shown.count("\n") == 3
    assert r"- delete hd-4\x1b[2J\r\nApply: 0 created" in shown
    assert r"hd-3\ud800 hd-5\u202etxt" in shown and r"warning: hd-6\x1b]0;title\x07" in shown


def test_plain_output_escapes_every_control_but_its_own_line_breaks():
    out = io.StringIO()
    stream = StyledStream(out)
    stream.lines([("", "a\nb\x1b[31m"), ("", "c\u2028d\ud800")])
    stream.print("multi\nline\x07 \u202e")
    assert out.getvalue() == "a\\nb\\x1b[31m\nc\\u2028d\\ud800\nmulti\nline\\x07 \\u202e\n"


def test_json_strings_go_through_the_redactor_before_json_escaping():
    """A secret's repr form (``\\'``) would be spelled differently once JSON-escaped: each string is
    redacted first. A number equal to a secret is masked; a lone surrogate becomes an escape."""
    secret = "sec-Qz81'9\"Canary"
    REDACTOR.add(secret)
    REDACTOR.add("90817263541")
    document = {"message": f"{secret!r} does not have the expected form", "n": 90817263541, "name": "hd\ud800"}
    shown = json.dumps(printable(document))
    assert "Canary" not in shown and "90817263541" not in shown
    assert json.loads(shown) == {
        "message": "'********' does not have the expected form",
        "n": MASK,
        "name": "hd\\ud800",
    }
    shown.encode("utf-8")
