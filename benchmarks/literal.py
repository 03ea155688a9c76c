#!/usr/bin/env python3
"""validate and no-op plan of a manifest of N literal instances, as ``provisioner import`` writes it for a
big organization (a script, not a timed test).

N unmanaged instances are seeded into an emulator's store; ``provisioner import`` writes the literal
manifest (each secret ``!env NAME``, ``adopt: <id>``); one ``apply --adopt`` takes them over; then each row is the
median of ``--repeats`` real ``python -m provisioner`` child processes:

  validate     the literal manifest, offline
  plan-noop    ``plan --detailed-exitcode`` (exit 0: nothing to do), at ``--latency-ms`` (20 ms)

beside two floors measured in the same run: the process start (``--version``) and a bare
``yaml.load`` of the same file with PyYAML's C loader (the library the manifest is read with). The
issue's targets: validate under 1 s; the no-op plan under 2.5 s with at most ceil(N / 200) + 1 requests;
peak RSS under 150 MB. Each instance has its own password (``--passwords distinct``, as in an organization:
10,000 secrets to register with the redactor), or all the same one (``--passwords same``).

    python benchmarks/literal.py [--instances 10000] [--repeats 5] [--passwords distinct|same]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from health import seed  # noqa: E402
from run import PAGE_SIZE, EmulatorProcess, base_env, write_workload  # noqa: E402  (benchmarks/, next to this)

BARE_YAML = (
    "import sys, yaml\n"
    "class L(yaml.CSafeLoader): pass\n"
    "L.add_constructor('!env', lambda loader, node: loader.construct_scalar(node))\n"
    "yaml.load(open(sys.argv[1], encoding='utf-8').read(), Loader=L)\n"
)


def password(i: int) -> str:
    """Instance i's password: letters, digits and symbols, as a person or a generator picks them."""
    return f"S3cr3t!p@ss#{i}"


def timed(command: list[str], cwd: Path, env: dict, expect: int = 0) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one child process; it must exit ``expect``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        if proc.returncode != expect:
            text = out.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(command[2:])}: exit {proc.returncode}\n{text[-4000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", help="work in this (new) directory and keep it, instead of a temporary one")
    parser.add_argument(
        "--passwords",
        choices=["distinct", "same"],
        default="distinct",
        help="each instance's own password (as in an organization; each is a secret to register) or one for all",
    )
    args = parser.parse_args(argv)
    n, cli = args.instances, [sys.executable, "-m", "provisioner"]
    with tempfile.TemporaryDirectory(prefix="provisioner-literal-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(exist_ok=True)
        write_workload(work, 0)  # manifest.yaml: its apiVersion and stack are what import copies
        seed(work / "emulator.db", n, owned=False)
        emulator = EmulatorProcess(work / "emulator.db", args.latency_ms, work / "emulator.log")
        try:
            env = {**base_env(), "CE_API_URL": emulator.url}
            timed([*cli, "import", "manifest.yaml", "--out", "literal.yaml"], work, env)
            same = args.passwords == "same"
            env |= {f"HELPDESK_C{i:06d}_HELPDESK_CONNECTWISE_PASSWORD": password(0 if same else i) for i in range(n)}
            timed([*cli, "apply", "literal.yaml", "--adopt", "--parallelism", "16", "--no-progress"], work, env)
            rows: dict[str, list[tuple[float, float]]] = {"startup": [], "bare yaml.load": [], "validate": []}
            rows["plan-noop"] = []
            for _ in range(args.repeats):
                rows["startup"].append(timed([*cli, "--version"], work, env))
                rows["bare yaml.load"].append(timed([sys.executable, "-c", BARE_YAML, "literal.yaml"], work, env))
                rows["validate"].append(timed([*cli, "validate", "literal.yaml"], work, env))
                emulator.requests.clear_requests()
                rows["plan-noop"].append(timed([*cli, "plan", "literal.yaml", "--detailed-exitcode"], work, env))
                requests = len(emulator.requests.requests())
        finally:
            emulator.stop()
        size = os.path.getsize(work / "literal.yaml")
    print(
        f"{n} literal instances ({size / 1e6:.1f} MB as import writes them), {args.passwords} passwords,"
        f" medians of {args.repeats} runs:"
    )
    for name, runs in rows.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        walls = [round(r[0], 2) for r in runs]
        print(f"  {name:16s} wall {wall:6.2f} s   cpu {cpu:6.2f} s   peak RSS {rss:4.0f} MB   (walls {walls})")
    print(f"  plan-noop made {requests} requests (at most {math.ceil(n / PAGE_SIZE) + 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
