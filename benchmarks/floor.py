"""The floor under the apply rows: N creates against the emulator from the barest client there is.

Sixteen threads (``--parallelism``), each with one keep-alive ``http.client`` connection, post the same
create bodies the benchmark's manifest renders, and nothing else: no validation, no listing, no final
check, no rate budget, no requests. What this takes is what the emulator and the machine cost before
provisioner does anything; ``run.py``'s apply rows are judged against ``ceil(N / P) x latency``, and
the difference between the two is the part no client can remove.

    python benchmarks/floor.py                      # 1,000 creates at 20 ms and at 100 ms, 3 runs each
    python benchmarks/floor.py --n 10000 --latency-ms 100 --repeats 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
USER_SECRET = "floor-user-secret"
ORG_SECRET = "floor-org-secret"


def body(i: int) -> bytes:
    return json.dumps(
        {
            "name": f"helpdesk-c{i:06d}",
            "element": {"key": "connectwisehd"},
            "tags": ["helpdesk", "provisioner:stack=bench"],
            "configuration": {
                "helpdesk.connectwise.username": f"api-c{i:06d}",
                "helpdesk.connectwise.password": "floor-password",
                "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
                "helpdesk.connectwise.company": f"company-{i}",
            },
        }
    ).encode()


def one_run(n: int, latency_ms: float, parallelism: int, work: Path) -> tuple[float, float]:
    """(seconds for the N creates, mean seconds a create took) against a fresh emulator."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CE_USER_SECRET": USER_SECRET, "CE_ORGANIZATION_SECRET": ORG_SECRET}
    db = work / f"floor-{time.monotonic_ns()}.db"
    command = [sys.executable, "-m", "provisioner", "emulator", "--port", "0", "--db", str(db), "--quiet"]
    emulator = subprocess.Popen(
        [*command, "--faults", f"latency={latency_ms:g}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert emulator.stdout is not None
        parts = urlsplit(emulator.stdout.readline().strip())
        headers = {
            "Authorization": f"User {USER_SECRET}, Organization {ORG_SECRET}",
            "Content-Type": "application/json",
            "Accept-Encoding": "gzip",
        }
        bodies = [body(i) for i in range(n)]
        lock = threading.Lock()
        todo = iter(range(n))
        took: list[float] = []

        def worker() -> None:
            connection = http.client.HTTPConnection(parts.hostname, parts.port)
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                started = time.perf_counter()
                connection.request("POST", f"{parts.path}/instances", body=bodies[i], headers=headers)
                answer = connection.getresponse()
                answer.read()
                took.append(time.perf_counter() - started)
                if answer.status != 200:
                    raise RuntimeError(f"create answered {answer.status}")

        threads = [threading.Thread(target=worker) for _ in range(parallelism)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started, statistics.fmean(took)
    finally:
        emulator.terminate()
        emulator.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="creates per run")
    parser.add_argument(
        "--latency-ms", type=float, action="append", help="emulator latency (repeatable; default 20 and 100)"
    )
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        for latency in args.latency_ms or [20.0, 100.0]:
            runs = [one_run(args.n, latency, args.parallelism, Path(tmp)) for _ in range(args.repeats)]
            bound = math.ceil(args.n / args.parallelism) * latency / 1000
            seconds = statistics.median(r[0] for r in runs)
            mean_ms = 1000 * statistics.median(r[1] for r in runs)
            print(
                f"{args.n} creates at {latency:g} ms, {args.parallelism} at a time, bare http.client: "
                f"median {seconds:.2f} s = {seconds / bound:.3f}x the bound {bound:.2f} s; "
                f"a create took {mean_ms:.1f} ms on average"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
