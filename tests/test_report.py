"""Text output: user text is printed as given (never read as rich markup or emoji codes), and a
run without a terminal does not even import rich (start-up time in pipelines)."""

from __future__ import annotations

import io
import subprocess
import sys

from conftest import REPO, base_env

from provisioner.cli.report import StyledStream
from provisioner.secret import REDACTOR


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_output_prints_markup_and_emoji_codes_verbatim():
    out = _Terminal()
    stream = StyledStream(out)
    assert stream.is_terminal
    stream.print("name [bold]x[/bold] :thumbs_up: :smile:", style="green")
    stream.lines([("red", "- delete [red]y[/] :fire:"), ("", "plain")])
    text = out.getvalue()
    assert "name [bold]x[/bold] :thumbs_up: :smile:" in text
    assert "- delete [red]y[/] :fire:" in text and "plain" in text
    assert "\N{THUMBS UP SIGN}" not in text


def test_plain_output_is_redacted_and_unstyled():
    secret = "plain-secret-Qz81x"
    REDACTOR.add(secret)
    out = io.StringIO()
    stream = StyledStream(out)
    assert not stream.is_terminal
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
