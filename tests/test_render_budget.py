"""The rendering budget (issue 17, point 10): each rendering is bounded in time and in the memory it
builds, whatever a template does (lipsum, format, repetition, padding, joins, captured output), and
SIGINT while rendering ends the run with 130, never a traceback.

Every case runs the real CLI in its own process; its peak memory is read from the kernel (wait4).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import manifest_text, write

PEAK_MB = 400  # a rendering refused in time stays far below this; the unbounded ones took gigabytes
HOSTILE = [
    "{{ lipsum(10**6) }}",
    "{{ lipsum(1, max=10**9) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '%999999999s'|format('x') }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}",
    "{{ '{0:>9999999}{0:>9999999}{0:>9999999}'.format(1) }}",
    "{{ 'x'|center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ ('x' * 10**7) + ('x' * 10**7) }}",
    "{{ ['x' * 10**7] * 10**6 }}",
    "{{ range(100000)|join('x' * 10**7) }}",
    "{{ ('x' * 1000)|replace('x', 'y' * 100000) }}",
    "{{ ('x\\n' * 100000)|indent(1000) }}",
    "{% set s = 'x' * 10**7 %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}",
    "{% set s %}{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}{% endset %}{{ s }}",
    "{% for i in range(100000) %}{% set x = 'y' * 10**6 %}{% endfor %}",
    "{{ dict.fromkeys(range(100000), 'x' * 10**6) }}",
]


def _run(cli, *args: str) -> tuple[int, str, int]:
    """Exit code, stderr and peak memory (MB) of one real run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", *args],
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    with proc.stderr:
        stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr, usage.ru_maxrss // 1024


def _manifest(cli, value: str) -> None:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    text = manifest_text(count=1).replace("company: acme", f'company: "{quoted}"')
    write(cli.cwd, "m.yaml", text)


@pytest.mark.parametrize("expression", HOSTILE)
def test_a_rendering_that_would_build_a_huge_value_is_refused_with_its_location(cli, db, expression):
    _manifest(cli, expression)
    code, stderr, peak = _run(cli, "validate", "m.yaml")
    assert code == 1, stderr
    assert "m.yaml:11 instance=helpdesk-0 configuration.helpdesk.connectwise.company: " in stderr
    assert "template exceeds its rendering budget" in stderr and "Traceback" not in stderr
    assert peak < PEAK_MB, f"{peak} MB"


@pytest.mark.parametrize(
    ("expression", "rendered"),
    [
        ("{{ 'L' ~ (lipsum(2, false, 3, 5)|length > 0) }}", "LTrue"),
        ("{{ '%s-%05d' % ('a', 42) }}", "a-00042"),
        ("{{ '{}:{:>4}'.format('a', 7) }}", "a:   7"),
        ("{{ 'ab'|center(6) }}|{{ ['a', 'b']|join(',') }}|{{ 'a' ~ 'b' }}", "  ab  |a,b|ab"),
        ("{{ 'a-b'|replace('-', '+') }}{{ 'x' * 3 }}{{ [1] + [2] }}", "a+bxxx[1, 2]"),
        ("{% set s %}{% for i in range(3) %}{{ i }}{% endfor %}{% endset %}{{ s }}", "012"),
    ],
)
def test_ordinary_templates_render_as_before(cli, db, expression, rendered):
    _manifest(cli, expression)
    proc = cli.run("render", "m.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"helpdesk.connectwise.company: '{rendered}'" in proc.stdout or f"company: {rendered}\n" in proc.stdout


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigint_while_rendering_exits_130_without_a_traceback(cli, db):
    """Forty values that each run to the end of their budget keep the run rendering for over a
    minute; the signal is sent once the process has used more CPU than starting takes."""
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    body = "".join(
        f"  - name: hd-{n}\n    element: connectwisehd\n    configuration:\n"
        f'      helpdesk.connectwise.company: "{loop}{n}"\n'
        for n in range(40)
    )
    write(cli.cwd, "m.yaml", f"apiVersion: provisioner/v1\nstack: tests\ninstances:\n{body}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", "plan", "m.yaml"],
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and _cpu_seconds(proc.pid) < 3.0:
        os.sched_yield()
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "internal error" not in stderr
    assert db.requests() == []
