#!/usr/bin/env python3
"""Benchmark of ``provisioner check`` against its emulator (a script, not a timed test).

Two rows, each the median of ``--repeats`` runs of a real ``python -m provisioner check`` child process
(wall time from Popen to exit), against an emulator subprocess with injected latency, whose database is
seeded directly with the stack's instances (the check reads them; how they were made does not matter):

  check        N instances (default 10,000) at 20 ms, no --ping. Target: one paged listing and no other
               request, under 3 s.
  check-ping   N instances (default 1,000) at 100 ms, --ping --parallelism 16. Target: within 1.25x of the
               latency bound, N / parallelism x latency (6.25 s for the defaults).

    python benchmarks/health.py [--instances 10000] [--ping-instances 1000] [--repeats 3]

Exit 0 when both targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run import CW_PASSWORD, PAGE_SIZE, EmulatorProcess, base_env, write_workload  # noqa: E402  (benchmarks/, next to this)

from provisioner.emulator.api import default_catalog  # noqa: E402
from provisioner.emulator.store import Store  # noqa: E402
from provisioner.ownership import stack_marker  # noqa: E402

CONFIG = {
    "helpdesk.connectwise.username": "api-1",
    "helpdesk.connectwise.password": "bench-password",
    "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
    "helpdesk.connectwise.company": "company",
}


def seed(db: Path, n: int, owned: bool = True) -> None:
    """N instances named as the benchmark manifest declares them, straight into the store: the stack's
    (``owned``), or unmanaged ones (no stack marker)."""
    store = Store(db, secret_keys=default_catalog().secret_keys)
    tags = [stack_marker("bench")] if owned else []
    try:
        for i in range(n):
            store.create_instance(f"helpdesk-c{i:06d}", "connectwisehd", "connectwisehd", tags, CONFIG)
    finally:
        store.close()


def one_run(work: Path, emulator: EmulatorProcess, extra: list[str]) -> tuple[float, Counter, int, float, float]:
    """One check: (wall seconds, requests by method and path, exit code, the child's CPU seconds, and the
    seconds from the listing's first answer to the last ping's, read from the emulator's log)."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    emulator.requests.clear_requests()
    env = {**base_env(), "CE_API_URL": emulator.url, "CW_PASSWORD": CW_PASSWORD}
    command = [sys.executable, "-m", "provisioner", "check", "manifest.yaml", "--inputs", "customers.yaml", *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    logged = emulator.requests.requests()
    requests = Counter(f"{r['method']} {r['path'].split('/elements/api-v2')[-1]}" for r in logged)
    stamps = [datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() for r in logged]
    return wall, requests, proc.returncode, used, (max(stamps) - min(stamps)) if stamps else 0.0


def row(name: str, n: int, latency_ms: float, extra: list[str], repeats: int, work: Path) -> dict:
    directory = work / f"{name}-{n}"
    directory.mkdir(parents=True)
    write_workload(directory, n)
    seed(directory / "emulator.db", n)
    emulator = EmulatorProcess(directory / "emulator.db", latency_ms, directory / "emulator.log")
    try:
        runs = [one_run(directory, emulator, extra) for _ in range(repeats)]
    finally:
        emulator.stop()
    return {
        "row": name,
        "instances": n,
        "latency_ms": latency_ms,
        "wall_s": statistics.median(r[0] for r in runs),
        "walls": [round(r[0], 2) for r in runs],
        "cpu_s": statistics.median(r[3] for r in runs),
        "requests_span_s": statistics.median(r[4] for r in runs),
        "requests": dict(runs[-1][1]),
        "exit_codes": sorted({r[2] for r in runs}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000, help="N of the check row (20 ms)")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--ping-instances", type=int, default=1_000, help="N of the check --ping row")
    parser.add_argument("--ping-latency-ms", type=float, default=100.0)
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="provisioner-health-bench-") as tmp:
        work = Path(tmp)
        plain = row("check", args.instances, args.latency_ms, [], args.repeats, work)
        pages = max(1, math.ceil(args.instances / PAGE_SIZE))
        only_listing = plain["requests"] == {"GET /instances": pages}
        met = plain["wall_s"] < 3.0 and only_listing and plain["exit_codes"] == [0]
        ok &= met
        print(
            f"check, {args.instances} instances at {args.latency_ms:g} ms: median {plain['wall_s']:.2f} s "
            f"(runs {plain['walls']}, CPU {plain['cpu_s']:.2f} s), requests {plain['requests']} "
            f"(expected {pages} x GET /instances): "
            f"target < 3 s and one paged listing: {'met' if met else 'NOT MET'}"
        )
        ping_args = ["--ping", "--parallelism", str(args.parallelism)]
        pinged = row("check-ping", args.ping_instances, args.ping_latency_ms, ping_args, args.repeats, work)
        bound = args.ping_instances / args.parallelism * args.ping_latency_ms / 1000.0
        met = pinged["wall_s"] <= 1.25 * bound and pinged["exit_codes"] == [0]
        ok &= met
        print(
            f"check --ping, {args.ping_instances} instances at {args.ping_latency_ms:g} ms, parallelism "
            f"{args.parallelism}: median {pinged['wall_s']:.2f} s (runs {pinged['walls']}, "
            f"CPU {pinged['cpu_s']:.2f} s; "
            f"first to last request {pinged['requests_span_s']:.2f} s), bound {bound:.2f} s, "
            f"ratio {pinged['wall_s'] / bound:.2f}x, requests {pinged['requests']}: target <= 1.25x: "
            f"{'met' if met else 'NOT MET'}"
        )
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
