#!/usr/bin/env python3
"""Time ``provisioner validate`` on manifests of N instances (a script, not a timed test).

  literal   N literal entries, as ``provisioner import`` writes them: name, element, adopt, tags and a
            configuration whose secret is ``!env <NAME>``, a variable of its own (set for the run)
  {{ env }} the same with each secret written ``"{{ env.<NAME> }}"``, as import wrote it before: N
            distinct templates, each compiled by Jinja (about 240 us each), so this row stays slow
  foreach   one ``forEach`` over an inputs file of N customers (the workload of benchmarks/run.py)

Each is a fresh ``python -m provisioner validate`` child; the script prints the median wall and CPU
time of ``--repeats`` runs, the largest peak RSS, and the startup baseline (``--version``). The
issue's targets: under 1 s at 10,000, peak RSS under 150 MB.

    python benchmarks/validate_scale.py [--n 10000] [--repeats 5] [--source CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from run import write_workload  # noqa: E402  (benchmarks/, next to this script)


def literal_manifest(n: int, templates: bool = False) -> tuple[str, dict[str, str]]:
    """The text of N literal instances and the environment their secrets need: each is ``!env NAME``,
    or with ``templates`` ``"{{ env.NAME }}"`` (and then not literal: a literal value is no template)."""
    lines = ["# Written by provisioner import", "apiVersion: provisioner/v1", "stack: bench", "instances:"]
    env = {}
    for i in range(n):
        variable = f"HELPDESK_C{i:06d}_HELPDESK_CONNECTWISE_PASSWORD"
        env[variable] = f"password-{i}"
        lines += [
            f"- name: helpdesk-c{i:06d}",
            "  element: connectwisehd",
            f"  adopt: {1000 + i}",
            *([] if templates else ["  literal: true"]),
            "  tags:",
            "  - helpdesk",
            f"  - region-{i % 7}",
            "  configuration:",
            f"    helpdesk.connectwise.username: api-c{i:06d}",
            f'    helpdesk.connectwise.password: "{{{{ env.{variable} }}}}"'
            if templates
            else f"    helpdesk.connectwise.password: !env {variable}",
            "    helpdesk.connectwise.server.url: api-na.myconnectwise.net",
            f"    helpdesk.connectwise.company: company-{i}",
            "    helpdesk.connectwise.wsdl.path: /v4_6_release/apis/1.5",
        ]
    return "\n".join(lines) + "\n", env


def timed(args: list[str], cwd: Path, env: dict[str, str], repeats: int) -> tuple[float, float, float]:
    """Median wall and CPU seconds (user + system) and the largest peak RSS (MB) of
    ``python -m provisioner ARGS``; each run must exit 0."""
    wall, cpu, rss = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryFile() as stderr:
            start = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, "-m", "provisioner", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
            _, status, usage = os.wait4(child.pid, 0)
            wall.append(time.perf_counter() - start)
            child.returncode = os.waitstatus_to_exitcode(status)
            cpu.append(usage.ru_utime + usage.ru_stime)
            rss.append(usage.ru_maxrss / 1024)
            if child.returncode != 0:
                stderr.seek(0)
                raise SystemExit(f"{' '.join(args)} exited {child.returncode}:\n{stderr.read()[-2000:].decode()}")
    return statistics.median(wall), statistics.median(cpu), max(rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose provisioner/ is timed")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["PYTHONPATH"] = str(args.source.resolve())
    env["NO_COLOR"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text, secrets = literal_manifest(args.n)
        (work / "literal.yaml").write_text(text, encoding="utf-8")
        (work / "templates.yaml").write_text(literal_manifest(args.n, templates=True)[0], encoding="utf-8")
        write_workload(work, args.n)  # run.py's forEach manifest.yaml over customers.yaml
        rows = {
            "startup (--version)": timed(["--version"], work, env, args.repeats),
            f"validate literal x{args.n}": timed(["validate", "literal.yaml"], work, {**env, **secrets}, args.repeats),
            "  {{ env.NAME }} (slow: Jinja)": timed(
                ["validate", "templates.yaml"], work, {**env, **secrets}, args.repeats
            ),
            f"validate forEach x{args.n}": timed(
                ["validate", "manifest.yaml", "--inputs", "customers.yaml"],
                work,
                {**env, "CW_PASSWORD": "bench-password"},
                args.repeats,
            ),
        }
    print(f"medians of {args.repeats} runs")
    for label, (wall, cpu, rss) in rows.items():
        print(f"{label:<30} wall {wall:6.3f} s   cpu {cpu:6.3f} s   peak RSS {rss:5.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
