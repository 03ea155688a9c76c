#!/usr/bin/env python3
"""Time ``provisioner validate`` on two manifests of N instances (a script, not a timed test).

  literal   N literal entries, as ``provisioner import`` writes them: name, element, adopt, tags and a
            configuration whose secret is an ``{{ env.<NAME> }}`` reference of its own (the variables
            are set for the run); then the same with each password written out (no template at all)
  foreach   one ``forEach`` over an inputs file of N customers (the workload of benchmarks/run.py)

Each is a fresh ``python -m provisioner validate`` child; the script prints the median wall time of
``--repeats`` runs, and the startup baseline (``--version``). The issue's target: under 1 s at 10,000.

    python benchmarks/validate_scale.py [--n 10000] [--repeats 5] [--source CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FOREACH = """\
apiVersion: provisioner/v1
stack: bench
inputs:
  customers: []
instances:
  - forEach: "{{ inputs.customers }}"
    name: "helpdesk-{{ item.id }}"
    element: connectwisehd
    tags: [helpdesk]
    configuration:
      helpdesk.connectwise.username: "api-{{ item.id }}"
      helpdesk.connectwise.password: "{{ env.CW_PASSWORD }}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: "{{ item.company }}"
"""


def literal_manifest(n: int, references: bool = True) -> tuple[str, dict[str, str]]:
    """The text of N literal instances and the environment their secret references need (with
    ``references`` False, each password is written out: no template string at all)."""
    lines = ["# Written by provisioner import", "apiVersion: provisioner/v1", "stack: bench", "instances:"]
    env = {}
    for i in range(n):
        variable = f"HELPDESK_C{i:06d}_HELPDESK_CONNECTWISE_PASSWORD"
        env[variable] = f"password-{i}"
        lines += [
            f"- name: helpdesk-c{i:06d}",
            "  element: connectwisehd",
            f"  adopt: {1000 + i}",
            "  tags:",
            "  - helpdesk",
            f"  - region-{i % 7}",
            "  configuration:",
            f"    helpdesk.connectwise.username: api-c{i:06d}",
            f'    helpdesk.connectwise.password: "{{{{ env.{variable} }}}}"'
            if references
            else f"    helpdesk.connectwise.password: password-{i}",
            "    helpdesk.connectwise.server.url: api-na.myconnectwise.net",
            f"    helpdesk.connectwise.company: company-{i}",
            "    helpdesk.connectwise.wsdl.path: /v4_6_release/apis/1.5",
        ]
    return "\n".join(lines) + "\n", env


def timed(args: list[str], cwd: Path, env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds (user + system) of ``python -m provisioner ARGS``; each run must exit 0."""
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner", *args], cwd=cwd, env=env, capture_output=True, text=True
        )
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return statistics.median(wall), statistics.median(cpu)


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
        (work / "plain.yaml").write_text(literal_manifest(args.n, references=False)[0], encoding="utf-8")
        (work / "foreach.yaml").write_text(FOREACH, encoding="utf-8")
        customers = ["customers:"] + [f"  - id: c{i:06d}\n    company: company-{i}" for i in range(args.n)]
        (work / "customers.yaml").write_text("\n".join(customers) + "\n", encoding="utf-8")
        rows = {
            "startup (--version)": timed(["--version"], work, env, args.repeats),
            f"validate literal x{args.n}": timed(["validate", "literal.yaml"], work, {**env, **secrets}, args.repeats),
            "  (no env references)": timed(["validate", "plain.yaml"], work, env, args.repeats),
            f"validate forEach x{args.n}": timed(
                ["validate", "foreach.yaml", "--inputs", "customers.yaml"],
                work,
                {**env, "CW_PASSWORD": "bench-password"},
                args.repeats,
            ),
        }
    print(f"medians of {args.repeats} runs")
    for label, (wall, cpu) in rows.items():
        print(f"{label:<28} wall {wall:6.3f} s   cpu {cpu:6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
