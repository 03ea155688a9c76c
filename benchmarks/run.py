#!/usr/bin/env python3
"""Scale benchmark of the provisioner CLI against its emulator (a script, not a timed test).

For each N it writes a manifest with one ``forEach`` over an inputs file of N customers, starts a
fresh emulator subprocess with injected latency, and times real ``python -m provisioner`` child
processes:

  validate     offline validation (no network bound; target < 2 s at 10,000)
  plan-empty   plan with nothing there (one list request)
  apply-create apply of N creates (--parallelism P --no-progress); a fresh emulator DB per repeat
  plan-noop    plan with the N instances existing (target < 3 s, <= 51 list requests at 10,000)
  apply-noop   a second apply, nothing to do

Wall time is perf_counter around Popen..wait4; peak RSS and CPU come from os.wait4's rusage of that
one child. Requests are read from the emulator's request log (EmulatorDB). Medians over repeats.
Also measures the emulator alone (throughput with keep-alive clients, no CLI in the loop), and the
scenario rows of ``scenarios.py``: creates at 100 ms of latency, creates under faults at the CLI's
default settings, creates under a rate limit (one run each, converged or not).

    python benchmarks/run.py [--rows scale,throughput,latency100,faults,ratelimit]
                             [--sizes 100,1000,10000] [--latency-ms 20] [--parallelism 16]
                             [--repeats 3] [--out benchmarks/results]

See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import floor  # noqa: E402  (benchmarks/, next to this script)
import scenarios  # noqa: E402

from provisioner.emulator import EmulatorDB  # noqa: E402

USER_SECRET = "bench-user-secret-7d1e"
ORG_SECRET = "bench-org-secret-3a9c"
CW_PASSWORD = "bench-password-51f0"
PAGE_SIZE = 200  # the client's page size and the emulator's maximum
CLK_TCK = os.sysconf("SC_CLK_TCK")

MANIFEST = """\
apiVersion: provisioner/v1
stack: bench
inputs:
  customers: []            # filled by --inputs customers.yaml
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

PHASES = ("validate", "plan-empty", "apply-create", "plan-noop", "apply-noop")
ANSIBLE_PHASES = ("ansible-create", "ansible-noop")  # the same reconciliation as an Ansible playbook (--ansible)
ANSIBLE_DIR = REPO / "benchmarks" / "ansible"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- workload --------------------------------------------------------------------------------------


def write_workload(directory: Path, n: int) -> tuple[Path, Path]:
    """manifest.yaml and customers.yaml (N customers) in ``directory``."""
    manifest = directory / "manifest.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    lines = ["customers:"] + [f"  - id: c{i:06d}\n    company: company-{i}" for i in range(n)]
    inputs = directory / "customers.yaml"
    inputs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest, inputs


def base_env() -> dict:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    keep["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    keep["NO_COLOR"] = "1"
    keep["CE_USER_SECRET"] = USER_SECRET
    keep["CE_ORGANIZATION_SECRET"] = ORG_SECRET
    return keep


# -- emulator subprocess ---------------------------------------------------------------------------


class EmulatorProcess:
    """``python -m provisioner emulator`` on a free port, its URL read from stdout's first line."""

    def __init__(self, db: Path, latency_ms: float, log_path: Path, faults: str = ""):
        self.db = db
        self._stderr = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        spec = f"latency={latency_ms:g}" + (f",{faults}" if faults else "")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "provisioner",
                "emulator",
                "--port",
                "0",
                "--db",
                str(db),
                "--faults",
                spec,
                "--quiet",
            ],
            cwd=db.parent,
            env=base_env(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        line = self._first_line(timeout=30)
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"emulator did not print its URL (got {line!r}); see {log_path}")
        self.url = line.strip()
        self.requests = EmulatorDB(db)

    def _first_line(self, timeout: float) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return box[0] if box else ""

    def cpu_seconds(self) -> float:
        """user+system CPU time of the emulator process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return float("nan")

    def instance_count(self) -> int:
        with sqlite3.connect(self.db.resolve().as_uri() + "?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM instances").fetchone()[0]

    def name_counts(self) -> dict[str, int]:
        """Instance name -> how many instances carry it (duplicates show as counts above 1)."""
        with sqlite3.connect(self.db.resolve().as_uri() + "?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT name, count(*) FROM instances GROUP BY name").fetchall())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


# -- one measured CLI run --------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss_mb: float
    cli_cpu_s: float
    emulator_cpu_s: float
    requests: dict = field(default_factory=dict)  # "GET list" / "POST" ... -> count
    methods: dict = field(default_factory=dict)  # method -> count
    statuses: dict = field(default_factory=dict)  # status -> count
    exit_code: int | None = 0  # None: killed after --run-timeout

    @property
    def cpu_ms_per_request(self) -> float | None:
        """The CLI's user+system CPU per request the emulator logged (None without requests)."""
        total = sum(self.methods.values())
        return 1000.0 * self.cli_cpu_s / total if total else None


def classify(req: dict) -> str:
    path = req["path"].rstrip("/")
    if req["method"] == "GET" and path.endswith("/instances") and "pageSize" in req["query"]:
        return "GET list"
    return f"{req['method']} {path.rsplit('/api-v2', 1)[-1]}" if req["method"] == "GET" else req["method"]


def run_cli(
    args: list[str], cwd: Path, env: dict, expect: tuple[int, ...], emulator: EmulatorProcess | None, label: str
) -> Sample:
    """Run one CLI child; wall time, rusage via wait4 on its pid, requests from the emulator log."""
    return run_command([sys.executable, "-m", "provisioner", *args], cwd, env, expect, emulator, label)


def run_command(
    command: list[str],
    cwd: Path,
    env: dict,
    expect: tuple[int, ...] | None,
    emulator: EmulatorProcess | None,
    label: str,
    timeout: float | None = None,
) -> Sample:
    """Run one child (and its children: rusage covers the waited-for tree); measured as run_cli.
    ``expect`` None accepts any exit; after ``timeout`` seconds the child is killed (exit_code None)."""
    if emulator is not None:
        emulator.requests.clear_requests()
        emu_cpu0 = emulator.cpu_seconds()
    out_path, err_path = cwd / f"{label}.stdout", cwd / f"{label}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            proc.kill()

        killer = threading.Timer(timeout, kill) if timeout else None
        if killer is not None:
            killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if killer is not None:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    killed = fired.is_set()
    if expect is not None and proc.returncode not in expect:
        tail = err_path.read_text(errors="replace")[-2000:] or out_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{label}: exit {proc.returncode}, expected {expect}:\n{tail}")
    sample = Sample(
        seconds,
        usage.ru_maxrss / 1024.0,
        usage.ru_utime + usage.ru_stime,
        0.0,
        exit_code=None if killed else proc.returncode,
    )
    if emulator is not None:
        sample.emulator_cpu_s = emulator.cpu_seconds() - emu_cpu0
        reqs = emulator.requests.requests()
        sample.requests = dict(Counter(classify(r) for r in reqs))
        sample.methods = dict(Counter(r["method"] for r in reqs))
        sample.statuses = {str(k): v for k, v in Counter(r["status"] for r in reqs).items()}
    return sample


# -- bounds and targets ----------------------------------------------------------------------------


def bound_seconds(phase: str, n: int, latency_s: float, parallelism: int) -> float | None:
    """The network floor of a phase: round trips that cannot overlap, times the latency."""
    if phase == "validate":
        return None
    if phase == "plan-empty":
        return math.ceil(max(0, 1) / PAGE_SIZE) * latency_s  # one (empty) list page
    if phase in ("apply-create", "ansible-create"):
        return (math.ceil(n / parallelism) + 1) * latency_s  # N creates, P at a time, + the listing
    return math.ceil(max(n, 1) / PAGE_SIZE) * latency_s  # plan-noop, apply-noop: the paged listing


def check_targets(
    phase: str,
    n: int,
    med: float,
    ratio: float | None,
    rss_mb: float,
    sample: Sample,
    latency_ms: float,
    parallelism: int,
    floor_s: float | None = None,
) -> tuple[str, str | None]:
    """(description of the issue's targets for this row, "PASS"/"FAIL"/None when none applies).
    ``floor_s``: what floor.py's bare client took for the same creates, in the same run."""
    checks: list[tuple[str, bool]] = []
    if phase == "apply-create" and n == 1000 and latency_ms == 20 and parallelism == 16 and floor_s:
        checks.append((f"<=2x bare client {floor_s:.2f} s", med <= 2 * floor_s))
    if phase == "plan-noop" and n == 10000:
        lists = sample.requests.get("GET list", 0)
        others = sum(v for k, v in sample.requests.items() if k != "GET list")
        checks.append(("<2.5s", med < 2.5))
        checks.append(("<=51 list, 0 other", lists <= 51 and others == 0))
    if phase == "validate" and n == 10000:
        checks.append(("<1s", med < 1.0))
    if n == 10000:
        checks.append(("RSS<150MB", rss_mb < 150.0))
    if not checks:
        return "", None
    text = ", ".join(name + ("" if ok else "!") for name, ok in checks)
    return text, "PASS" if all(ok for _, ok in checks) else "FAIL"


# -- per-N run -------------------------------------------------------------------------------------


def bench_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, list[Sample]]:
    directory = work / f"n{n}"
    directory.mkdir()
    manifest, inputs = write_workload(directory, n)
    files = [str(manifest), "--inputs", str(inputs), "--max-foreach", str(max(n, 1))]
    net = ["--parallelism", str(args.parallelism)]
    env = {**base_env(), "CW_PASSWORD": CW_PASSWORD}
    repeats = args.repeats
    create_repeats = repeats if n <= args.create_repeat_max_n else 1
    if args.create_repeats is not None:
        create_repeats = args.create_repeats
    samples: dict[str, list[Sample]] = {p: [] for p in PHASES}
    emulators: list[EmulatorProcess] = []

    def start_emulator(tag: str) -> EmulatorProcess:
        emu = EmulatorProcess(directory / f"{tag}.db", args.latency_ms, directory / "emulator.log")
        emulators.append(emu)
        return emu

    def measure(
        phase: str, cli_args: list[str], expect: tuple[int, ...], emu: EmulatorProcess | None, rep: int
    ) -> Sample:
        sample = run_cli(cli_args, directory, env, expect, emu, f"{phase}-{rep}")
        samples[phase].append(sample)
        extra = f", requests {sample.requests}" if emu is not None else ""
        log(f"  N={n} {phase} #{rep + 1}: {sample.seconds:.3f} s, RSS {sample.rss_mb:.0f} MB{extra}")
        return sample

    try:
        for rep in range(repeats):
            measure("validate", ["validate", *files], (0,), None, rep)
        emu = start_emulator("db0")
        env["CE_API_URL"] = emu.url
        for rep in range(repeats):
            measure("plan-empty", ["plan", *files, *net, "--detailed-exitcode"], (2,), emu, rep)
        for rep in range(create_repeats):
            if rep > 0:  # a fresh, empty database for every create run
                emu.stop()
                emu = start_emulator(f"db{rep}")
                env["CE_API_URL"] = emu.url
            measure("apply-create", ["apply", *files, *net, "--no-progress"], (0,), emu, rep)
            count = emu.instance_count()
            if count != n:
                raise RuntimeError(f"N={n}: apply left {count} instances, expected {n}")
        for rep in range(repeats):
            measure("plan-noop", ["plan", *files, *net, "--detailed-exitcode"], (0,), emu, rep)
        for rep in range(repeats):
            measure("apply-noop", ["apply", *files, *net, "--no-progress"], (0,), emu, rep)
    finally:
        for e in emulators:
            e.stop()
    return samples


def bench_ansible(n: int, args: argparse.Namespace, work: Path) -> dict[str, list[Sample]]:
    """The same reconciliation with Ansible's uri module (benchmarks/ansible/reconcile.yml): list every
    instance, create the missing ones, on a fresh emulator; then the no-op run. Uses bench_size's
    workload directory for N."""
    directory = work / f"n{n}"
    inputs = directory / "customers.yaml"
    samples: dict[str, list[Sample]] = {p: [] for p in ANSIBLE_PHASES}
    playbook = Path(args.ansible)
    python = playbook.parent / "python"  # the interpreter of ansible's own environment runs the modules
    interpreter = str(python if python.exists() else sys.executable)
    command = [
        str(playbook),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={interpreter}",
        "-e",
        f"customers_file={inputs}",
        str(ANSIBLE_DIR / "reconcile.yml"),
    ]
    emu = EmulatorProcess(directory / "ansible.db", args.latency_ms, directory / "emulator.log")
    env = {
        **base_env(),
        "CW_PASSWORD": CW_PASSWORD,
        "CE_API_URL": emu.url,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
    }
    try:
        for phase, repeats in (("ansible-create", 1), ("ansible-noop", args.repeats)):
            for rep in range(repeats):
                sample = run_command(command, directory, env, (0,), emu, f"{phase}-{rep}")
                samples[phase].append(sample)
                log(f"  N={n} {phase} #{rep + 1}: {sample.seconds:.3f} s, requests {sample.requests}")
            if phase == "ansible-create" and emu.instance_count() != n:
                raise RuntimeError(f"N={n}: the playbook left {emu.instance_count()} instances, expected {n}")
    finally:
        emu.stop()
    return samples


# -- the emulator alone ----------------------------------------------------------------------------


def _hammer(url: str, kind: str, threads: int, start_at: float, seconds: float, queue: multiprocessing.Queue) -> None:
    """One load process: ``threads`` keep-alive connections (http.client, the cheapest stdlib client),
    as many requests as possible between ``start_at`` and ``start_at + seconds`` (time.time())."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    auth = f"User {USER_SECRET}, Organization {ORG_SECRET}"
    body = json.dumps(
        {
            "name": "load",
            "element": {"key": "connectwisehd"},
            "tags": ["load"],
            "configuration": {
                "helpdesk.connectwise.username": "u",
                "helpdesk.connectwise.password": "p",
                "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
                "helpdesk.connectwise.company": "c",
            },
        }
    ).encode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    counts, errors = [0] * threads, [0] * threads
    end_at = start_at + seconds

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < end_at:
            if kind == "GET":
                conn.request("GET", f"{parts.path}/instances?pageSize=1", headers=headers)
            else:
                conn.request("POST", f"{parts.path}/instances", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            counts[i] += 1
            errors[i] += response.status >= 400 and response.status != 404
        conn.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put((sum(counts), sum(errors)))


def _seed_one(url: str) -> None:
    import urllib.request

    body = json.dumps(
        {
            "name": "seed",
            "element": {"key": "connectwisehd"},
            "configuration": {
                "helpdesk.connectwise.username": "u",
                "helpdesk.connectwise.password": "p",
                "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
                "helpdesk.connectwise.company": "c",
            },
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/instances",
        data=body,
        method="POST",
        headers={"Authorization": f"User {USER_SECRET}, Organization {ORG_SECRET}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def emulator_throughput(work: Path, latency_ms: float, connections: int, seconds: float) -> dict:
    """Requests/s of the emulator alone: ``connections`` keep-alive clients over 2 load processes,
    counted over a common window that starts after the load processes are up."""
    result = {}
    ctx = multiprocessing.get_context("spawn")
    procs = 2 if connections >= 2 else 1
    for lat in sorted({0.0, latency_ms}):
        emu = EmulatorProcess(work / f"throughput-{lat:g}.db", lat, work / "throughput.log")
        try:
            for kind in ("GET", "POST"):
                if kind == "GET":  # one instance, so the list answers 200 with one item
                    _seed_one(emu.url)
                queue = ctx.Queue()
                per = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
                start_at = time.time() + 2.0  # spawn + imports happen before the window
                workers = [ctx.Process(target=_hammer, args=(emu.url, kind, k, start_at, seconds, queue)) for k in per]
                for w in workers:
                    w.start()
                time.sleep(max(0.0, start_at - time.time()))
                cpu0 = emu.cpu_seconds()
                time.sleep(seconds)
                cpu = emu.cpu_seconds() - cpu0
                totals = [queue.get() for _ in workers]
                for w in workers:
                    w.join()
                done = sum(t[0] for t in totals)
                per_request_ms = 1000 * cpu / max(done, 1)
                key = f"{kind} latency={lat:g}ms"
                result[key] = {
                    "requests": done,
                    "errors": sum(t[1] for t in totals),
                    "seconds": seconds,
                    "rps": round(done / seconds, 1),
                    "emulator_cpu_s": round(cpu, 2),
                    "emulator_cpu_ms_per_request": round(per_request_ms, 3),
                    "emulator_cpu_capacity_rps": round(1000 / per_request_ms, 0) if done else None,
                    "connections": connections,
                }
                log(
                    f"  emulator alone, {key}, {connections} keep-alive connections: "
                    f"{done / seconds:.0f} req/s, emulator CPU {per_request_ms:.2f} ms/request "
                    f"(one core: {1000 / per_request_ms:.0f} req/s)"
                )
        finally:
            emu.stop()
    return result


# -- scenario rows: 100 ms latency, faults, rate limit (targets in scenarios.py) -----------------


def cli_settle_default() -> float:
    """The settle wait ``apply`` uses when none is given: its --settle default, else --timeout's
    (as provisioner.cli.main resolves it), read from the command's own click options."""
    from provisioner.cli.main import cli

    params = {p.name: p for p in cli.commands["apply"].params}
    settle = params["settle"].default if "settle" in params else None
    return float(settle if settle is not None else params["timeout"].default)


def scenario_workload(work: Path, n: int) -> list[str]:
    """The manifest and inputs for N creates (written once per N), as CLI arguments."""
    directory = work / f"scenario-n{n}"
    if not directory.exists():
        directory.mkdir()
        write_workload(directory, n)
    return [
        str(directory / "manifest.yaml"),
        "--inputs",
        str(directory / "customers.yaml"),
        "--max-foreach",
        str(max(n, 1)),
    ]


def run_scenario(sc: scenarios.Scenario, index: int, args: argparse.Namespace, work: Path) -> scenarios.Measured:
    """One apply of ``sc.n`` creates on a fresh emulator with the scenario's faults."""
    files = scenario_workload(work, sc.n)
    directory = work / f"scenario-n{sc.n}"
    emu = EmulatorProcess(directory / f"scenario-{index}.db", sc.latency_ms, directory / "emulator.log", sc.faults)
    env = {**base_env(), "CW_PASSWORD": CW_PASSWORD, "CE_API_URL": emu.url}
    try:
        sample = run_command(
            [sys.executable, "-m", "provisioner", "apply", *files, *sc.cli_args, "--no-progress"],
            directory,
            env,
            None,
            emu,
            f"scenario-{index}",
            timeout=args.run_timeout,
        )
        log_rows = emu.requests.requests()
        return scenarios.Measured(
            sample.seconds,
            sample.exit_code,
            sample.cli_cpu_s,
            len(log_rows),
            sample.statuses,
            emu.name_counts(),
            scenarios.throttled_after(log_rows),
        )
    finally:
        emu.stop()


def run_scenarios(args: argparse.Namespace, work: Path) -> list[dict]:
    """Run the selected scenario rows; each result with its target and verdict."""
    chosen = scenarios.build(
        args.rows,
        latency100_sizes=args.latency100_sizes,
        parallelism=args.parallelism,
        fault_n=args.fault_size,
        fault_latency_ms=args.fault_latency_ms,
        seed=args.fault_seed,
        ratelimit_n=args.ratelimit_size,
        ratelimit_rps=args.ratelimit_rps,
        ratelimit_burst=args.ratelimit_burst,
    )
    settle_s = args.settle_s if args.settle_s is not None else cli_settle_default()
    results, reference_s = [], None
    for index, sc in enumerate(chosen):
        log(
            f"  {sc.row}: {sc.label}, N={sc.n}, emulator latency={sc.latency_ms:g}"
            + (f",{sc.faults}" if sc.faults else "")
        )
        if sc.row == "latency100" and sc.n in scenarios.FLOOR_SIZES:  # the bare client, in the same run
            reference_s = floor.one_run(sc.n, sc.latency_ms, args.parallelism, work)[0]
            log(f"    floor.py's bare client: {reference_s:.2f} s")
        m = run_scenario(sc, index, args, work)
        if sc.reference:
            reference_s = m.seconds
        verdict = scenarios.judge(sc, m, reference_s, settle_s)
        per_request = 1000 * m.cli_cpu_s / m.requests if m.requests else None
        result = {
            "row": sc.row,
            "scenario": sc.label,
            "n": sc.n,
            "latency_ms": sc.latency_ms,
            "emulator_faults": sc.faults,
            "cli_args": list(sc.cli_args),
            "seconds": m.seconds,
            "exit_code": m.exit_code,
            "requests": m.requests,
            "statuses": m.statuses,
            "cli_cpu_s": m.cli_cpu_s,
            "cli_cpu_ms_per_request": per_request,
            "throttled_after_first_s": list(m.throttled_after_first_s),
            "settle_s": settle_s,
            **verdict,
        }
        results.append(result)
        log(
            f"    {m.seconds:.2f} s, exit {m.exit_code}, {m.requests} requests {m.statuses}, "
            f"one run: {verdict['converged_in_one_run']}, duplicates {verdict['duplicates']}, "
            f"missing {verdict['missing']}; {verdict['target'] or 'reference'} {verdict['verdict'] or ''}"
        )
    return results


def print_scenarios(results: list[dict]) -> None:
    """The scenario rows: measured time against the limit, convergence, 429 share, CPU per request."""
    if not results:
        return
    head = (
        f"{'row':<11}{'scenario':<28}{'N':>6}{'s':>9}{'limit s':>9}{'exit':>5}{'one run':>8}{'dup':>5}"
        f"{'miss':>5}{'429>1s':>8}{'reqs':>7}{'cli ms/req':>11}  {'target':<58}{'':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        limit = f"{r['limit_s']:.2f}" if r["limit_s"] is not None else "-"
        throttled, later = r["throttled_after_first_s"]
        share = f"{throttled / later:.0%}" if later else "-"
        cpu = f"{r['cli_cpu_ms_per_request']:.2f}" if r["cli_cpu_ms_per_request"] is not None else "-"
        exit_code = "kill" if r["exit_code"] is None else str(r["exit_code"])
        print(
            f"{r['row']:<11}{r['scenario']:<28}{r['n']:>6}{r['seconds']:>9.2f}{limit:>9}{exit_code:>5}"
            f"{'yes' if r['converged_in_one_run'] else 'NO':>8}{r['duplicates']:>5}{r['missing']:>5}{share:>8}"
            f"{r['requests']:>7}{cpu:>11}  {r['target'] or '(reference)':<58}{r['verdict'] or '':>5}"
        )
    print()


# -- report ----------------------------------------------------------------------------------------


def summarize(
    all_samples: dict[int, dict[str, list[Sample]]], args: argparse.Namespace, startup_s: float
) -> list[dict]:
    latency_s = args.latency_ms / 1000.0
    rows = []
    for n, phases in all_samples.items():
        for phase in (*PHASES, *ANSIBLE_PHASES):
            samples = phases.get(phase) or []
            if not samples:
                continue
            med = statistics.median(s.seconds for s in samples)
            bound = bound_seconds(phase, n, latency_s, args.parallelism)
            ratio = med / bound if bound else None
            rss = max(s.rss_mb for s in samples)
            last = samples[-1]
            floor_s = args.floor_s.get(n) if phase == "apply-create" else None
            target, verdict = check_targets(phase, n, med, ratio, rss, last, args.latency_ms, args.parallelism, floor_s)
            writes = sum(v for k, v in last.requests.items() if k != "GET list")
            rows.append(
                {
                    "phase": phase,
                    "n": n,
                    "median_s": med,
                    "samples_s": [s.seconds for s in samples],
                    "bound_s": bound,
                    "ratio": ratio,
                    "peak_rss_mb": rss,
                    "ratio_net_of_startup": (med - startup_s) / bound if bound else None,
                    "median_rss_mb": statistics.median(s.rss_mb for s in samples),
                    "cli_cpu_s": statistics.median(s.cli_cpu_s for s in samples),
                    "cli_cpu_ms_per_request": last.cpu_ms_per_request,
                    "emulator_cpu_s": statistics.median(s.emulator_cpu_s for s in samples),
                    "requests": last.requests,
                    "requests_by_method": last.methods,
                    "statuses": last.statuses,
                    "requests_identical_across_repeats": all(s.requests == last.requests for s in samples),
                    "achieved_rps": (sum(last.requests.values()) / med) if last.requests else None,
                    "write_requests": writes,
                    "target": target,
                    "verdict": verdict,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'phase':<13}{'N':>7}{'median s':>10}{'bound s':>9}{'ratio':>8}{'RSS MB':>8}"
        f"{'-start':>8}{'cpu cli/emu s':>15}{'cli ms/req':>11}  {'requests':<26}{'target':<38}{'':>4}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        bound = f"{r['bound_s']:.3f}" if r["bound_s"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        net = f"{r['ratio_net_of_startup']:.2f}x" if r["ratio_net_of_startup"] is not None else "-"
        reqs = " ".join(f"{k.replace(' ', ':')}={v}" for k, v in sorted(r["requests"].items())) or "none"
        cpu = f"{r['cli_cpu_s']:.2f}/{r['emulator_cpu_s']:.2f}"
        per_request = f"{r['cli_cpu_ms_per_request']:.2f}" if r["cli_cpu_ms_per_request"] is not None else "-"
        print(
            f"{r['phase']:<13}{r['n']:>7}{r['median_s']:>10.3f}{bound:>9}{ratio:>8}{r['peak_rss_mb']:>8.0f}"
            f"{net:>8}{cpu:>15}{per_request:>11}  {reqs:<26}{r['target']:<38}{r['verdict'] or '':>4}"
        )
    print()


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot written")
        return False
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = dict(
        zip(
            (*PHASES, *ANSIBLE_PHASES),
            ("tab:gray", "tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:olive"),
            strict=True,
        )
    )
    sizes = sorted({r["n"] for r in rows})
    for phase in (*PHASES, *ANSIBLE_PHASES):
        mine = sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["n"])
        if not mine:
            continue
        ax.plot(
            [r["n"] for r in mine], [r["median_s"] for r in mine], "o-", color=colors[phase], label=f"{phase} (median)"
        )
        bounded = [r for r in mine if r["bound_s"]]
        if bounded and phase in PHASES and phase != "apply-noop":  # apply-noop has the same bound as plan-noop
            ax.plot(
                [r["n"] for r in bounded],
                [r["bound_s"] for r in bounded],
                "--",
                color=colors[phase],
                alpha=0.7,
                label=f"{phase} bound",
            )
    ax.axhline(2.0, color=colors["validate"], linestyle=":", alpha=0.7, label="validate target 2 s @10k")
    ax.axhline(3.0, color=colors["plan-noop"], linestyle=":", alpha=0.7, label="no-op plan target 3 s @10k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("N instances")
    ax.set_ylabel("wall time of the CLI process, s (median)")
    ax.set_title(
        f"provisioner: time vs N (latency {args.latency_ms:g} ms, parallelism {args.parallelism}, "
        f"{os.cpu_count()} CPUs)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def startup_baseline(work: Path, repeats: int) -> dict:
    """Interpreter + package import cost: ``python -m provisioner --version``."""
    env = base_env()
    run_cli(["--version"], work, env, (0,), None, "startup-warmup")  # warm the page cache first
    times = []
    for rep in range(max(5, repeats)):
        times.append(run_cli(["--version"], work, env, (0,), None, f"startup-{rep}"))
    return {
        "median_s": statistics.median(s.seconds for s in times),
        "samples_s": [s.seconds for s in times],
        "rss_mb": max(s.rss_mb for s in times),
    }


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _sizes(text: str) -> list[int]:
    """ "100,1000" -> [100, 1000]."""
    return [int(part) for part in text.split(",") if part.strip()]


def _add_scenario_options(parser: argparse.ArgumentParser) -> None:
    """Options of the scenario rows (scenarios.py)."""
    parser.add_argument(
        "--latency100-sizes",
        default="1000,10000",
        help="N values of the latency100 row (creates at 100 ms, --parallelism P)",
    )
    parser.add_argument("--fault-size", type=int, default=1000, help="N of the faults rows")
    parser.add_argument("--fault-latency-ms", type=float, default=20.0, help="latency of the faults and ratelimit rows")
    parser.add_argument("--fault-seed", type=int, default=1, help="seed of the emulator's fault draws")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=None,
        help="settle wait the fault targets allow (default: apply's own default, read from the CLI)",
    )
    parser.add_argument("--ratelimit-size", type=int, default=1000, help="N of the ratelimit row")
    parser.add_argument("--ratelimit-rps", type=float, default=100.0, help="the emulator's rate limit (requests/s)")
    parser.add_argument(
        "--ratelimit-burst",
        type=float,
        default=0,
        help="the rate limit's burst (0: the emulator's default, one second's worth)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=3600.0,
        help="kill a scenario's apply after this many seconds (reported as 'kill')",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(scenarios.ROWS),
        help="row groups to run, comma-separated, from "
        + ", ".join(scenarios.ROWS)
        + " (scale: validate/plan/apply at --sizes; throughput: the emulator alone)",
    )
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated N values of the scale rows")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency the emulator injects (scale rows)")
    parser.add_argument("--parallelism", type=int, default=16, help="--parallelism of plan/apply")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each idempotent phase (median)")
    parser.add_argument(
        "--create-repeats",
        type=int,
        default=None,
        help="runs of the create apply (default: --repeats for N <= --create-repeat-max-n, else 1)",
    )
    parser.add_argument(
        "--create-repeat-max-n",
        type=int,
        default=1000,
        help="largest N whose create apply is repeated (each repeat needs a fresh emulator)",
    )
    parser.add_argument(
        "--throughput-seconds", type=float, default=3.0, help="duration of each emulator-alone load test (0 skips it)"
    )
    _add_scenario_options(parser)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results directory")
    parser.add_argument(
        "--ansible",
        metavar="ANSIBLE_PLAYBOOK",
        help="also run benchmarks/ansible/reconcile.yml with this ansible-playbook executable",
    )
    parser.add_argument(
        "--ansible-max-n",
        type=int,
        default=100,
        help="largest N the playbook runs for (its creates are sequential: ~0.5 s each)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the work directory (manifests, DBs, logs)")
    args = parser.parse_args(argv)
    args.floor_s = {}  # N -> floor.py's bare client, measured in this run
    args.sizes = _sizes(args.sizes)
    args.latency100_sizes = _sizes(args.latency100_sizes)
    args.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(args.rows) - set(scenarios.ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)} (known: {', '.join(scenarios.ROWS)})")
    if args.throughput_seconds <= 0 and "throughput" in args.rows:
        args.rows.remove("throughput")
    counts = [args.repeats, args.parallelism, args.fault_size, args.ratelimit_size, *args.sizes, *args.latency100_sizes]
    if any(n < 1 for n in counts) or args.ratelimit_rps <= 0:
        parser.error("--repeats, --parallelism, sizes and --ratelimit-rps must be positive")
    return args


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Run the selected rows; their raw results."""
    startup = startup_baseline(work, args.repeats)
    log(
        f"startup baseline (python -m provisioner --version): {startup['median_s']:.3f} s, "
        f"RSS {startup['rss_mb']:.0f} MB"
    )
    all_samples: dict[int, dict[str, list[Sample]]] = {}
    for n in args.sizes if "scale" in args.rows else ():
        log(f"N={n}")
        if n == 1000:  # the bare client's time for the same creates (floor.py), for the target
            args.floor_s[n] = floor.one_run(n, args.latency_ms, args.parallelism, work)[0]
            log(f"  N={n} floor.py's bare client: {args.floor_s[n]:.3f} s")
        all_samples[n] = bench_size(n, args, work)
        if args.ansible and n <= args.ansible_max_n:
            all_samples[n].update(bench_ansible(n, args, work))
    throughput = {}
    if "throughput" in args.rows:
        log("emulator alone")
        throughput = emulator_throughput(work, args.latency_ms, args.parallelism, args.throughput_seconds)
    scenario_results = run_scenarios(args, work)
    return {"startup": startup, "samples": all_samples, "throughput": throughput, "scenarios": scenario_results}


def report(args: argparse.Namespace, measured: dict) -> tuple[list[dict], list[str], list[str]]:
    """Print every table; (scale rows, failed targets, passed targets)."""
    startup, throughput, scenario_results = measured["startup"], measured["throughput"], measured["scenarios"]
    rows = summarize(measured["samples"], args, startup["median_s"])
    if rows:
        print_table(rows)
    print(f"startup baseline (python -m provisioner --version): {startup['median_s']:.3f} s")
    for row in rows:
        if row["phase"] == "apply-create" and row["achieved_rps"]:
            ceiling = args.parallelism / (args.latency_ms / 1000.0) if args.latency_ms else float("inf")
            print(
                f"apply-create N={row['n']}: achieved {row['achieved_rps']:.0f} req/s "
                f"(latency ceiling P/latency = {ceiling:.0f} req/s)"
            )
    for key, t in throughput.items():
        print(
            f"emulator alone, {key}: {t['rps']:.0f} req/s with {t['connections']} keep-alive connections "
            f"({t['emulator_cpu_ms_per_request']:.2f} ms emulator CPU per request)"
        )
    print()
    print_scenarios(scenario_results)
    failures = [f"{r['phase']} N={r['n']}: {r['target']}" for r in rows if r["verdict"] == "FAIL"]
    failures += [
        f"{r['row']} {r['scenario']} N={r['n']}: {r['target']}" for r in scenario_results if r["verdict"] == "FAIL"
    ]
    passes = [f"{r['phase']} N={r['n']}" for r in rows if r["verdict"] == "PASS"]
    passes += [f"{r['row']} {r['scenario']}" for r in scenario_results if r["verdict"] == "PASS"]
    print(f"targets: {len(passes)} pass, {len(failures)} fail" + "".join(f"\n  FAIL {f}" for f in failures))
    return rows, failures, passes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-"))
    started = time.perf_counter()
    info = machine_info()
    log(
        f"work dir {work}; {info['cpu_count']} CPUs, Python {info['python']}; rows {','.join(args.rows)}; "
        f"sizes {args.sizes}, latency {args.latency_ms:g} ms, parallelism {args.parallelism}, repeats {args.repeats}"
    )
    try:
        measured = measure(args, work)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    rows, failures, _ = report(args, measured)
    result = {
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "startup": measured["startup"],
        "rows": rows,
        "scenarios": measured["scenarios"],
        "emulator_throughput": measured["throughput"],
        "raw_samples": {
            str(n): {p: [asdict(s) for s in ss] for p, ss in phases.items()}
            for n, phases in measured["samples"].items()
        },
        "elapsed_s": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    wrote_plot = plot(rows, out / "plot.png", args) if rows else False
    log(
        f"wrote {out / 'results.json'}"
        + (f" and {out / 'plot.png'}" if wrote_plot else "")
        + f" in {time.perf_counter() - started:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
