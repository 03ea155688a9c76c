"""Shared machinery of the reliability suite (test_reliability.py, test_signals.py).

A ``Harness`` is one emulator on loopback whose user and organization secrets are unique canaries,
one work directory, and every CLI run made against it, captured. The instance passwords are
canaries too (``<CANARY_PW>-<n>``, read from the environment). After a scenario, ``leaks()`` searches
everything the runs printed and every file they left (outside the outputs file) for any canary and
any token the emulator ever issued.

Nothing here mocks anything: the CLI runs as ``python -m provisioner`` in a subprocess, and every
assertion reads the emulator's SQLite database.
"""

from __future__ import annotations

import calendar
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import requests
from conftest import REPO, base_env

from provisioner.emulator import Emulator, EmulatorDB, FaultConfig

REPO_SCHEMAS = REPO / "schemas" / "elements"

# Small timeouts keep the suite fast: "slow" answers (1.5 s) really exceed the 1 s read timeout.
FAST_FLAGS = ("--timeout", "1", "--connect-timeout", "1", "--settle", "1.5", "--parallelism", "16")

MANIFEST = """\
apiVersion: provisioner/v1
stack: {stack}
inputs:
  numbers: []
instances:
  - forEach: "{{{{ inputs.numbers }}}}"
    name: "hd-{{{{ item }}}}"
    element: connectwisehd
    tags: [helpdesk]
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{{{ env.CANARY_PW }}}}-{{{{ item }}}}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
"""


def names(count: int) -> list[str]:
    return [f"hd-{i}" for i in range(count)]


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    tokens_allowed_on_stdout: bool = False

    def json(self) -> dict:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"stdout is not JSON (exit {self.returncode}):\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"
            ) from None


@dataclass
class Harness:
    root: Path
    stack: str = "rel"
    emulator: Emulator | None = None
    runs: list[Run] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = secrets.token_hex(6)
        self.user_secret = f"canary-user-{tag}"
        self.org_secret = f"canary-org-{tag}"
        self.pw_canary = f"canary-pw-{tag}"
        self.work = self.root / "work"
        self.tmp = self.root / "tmp"  # TMPDIR of the CLI: crash files would land here
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "out").mkdir(exist_ok=True)  # provisioner writes outputs only into existing directories
        self.tmp.mkdir(exist_ok=True)
        self.db_path = self.root / "emulator.db"
        self.db = EmulatorDB(self.db_path)
        self.outputs = self.work / "out" / "tokens.json"
        self.outputs.parent.mkdir(exist_ok=True)  # a missing directory is refused, never created

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Harness:
        self.emulator = Emulator(self.db_path, self.user_secret, self.org_secret, faults=FaultConfig())
        self.emulator.start()
        return self

    def stop(self) -> None:
        for proc in self.procs:  # a test that failed half-way may leave its apply running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.emulator is not None:
            self.emulator.stop()

    def faults(self, config: FaultConfig | None) -> None:
        assert self.emulator is not None
        self.emulator.faults = config or FaultConfig()

    @property
    def canaries(self) -> tuple[str, ...]:
        return (self.user_secret, self.org_secret, self.pw_canary)

    # -- the manifest ---------------------------------------------------------------------------

    def write_manifest(self, count: int, extra: str = "") -> Path:
        manifest = self.work / "m.yaml"
        manifest.write_text(MANIFEST.format(stack=self.stack) + extra, encoding="utf-8")
        (self.work / "items.yaml").write_text(json.dumps({"numbers": list(range(count))}), encoding="utf-8")
        return manifest

    def password(self, name: str) -> str:
        return f"{self.pw_canary}-{name.removeprefix('hd-')}"

    # -- running the CLI -------------------------------------------------------------------------

    def env(self, extra: dict | None = None) -> dict:
        assert self.emulator is not None
        return {
            **base_env(),
            "CE_API_URL": self.emulator.url,
            "CE_USER_SECRET": self.user_secret,
            "CE_ORGANIZATION_SECRET": self.org_secret,
            "CANARY_PW": self.pw_canary,
            "TMPDIR": str(self.tmp),
            **(extra or {}),
        }

    def argv(self, command: str, *args: str) -> list[str]:
        extra = ["--inputs", "items.yaml"] if command in ("apply", "plan", "output", "destroy") else []
        return [sys.executable, "-m", "provisioner", command, "m.yaml", *extra, *map(str, args)]

    def run(self, command: str, *args: str, env: dict | None = None, timeout: float = 600) -> Run:
        argv = self.argv(command, *args)
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=self.work, env=self.env(env), capture_output=True, text=True, timeout=timeout)
        run = Run(
            tuple(argv[3:]),
            proc.returncode,
            proc.stdout,
            proc.stderr,
            time.monotonic() - started,
            tokens_allowed_on_stdout=command == "output",
        )
        self.runs.append(run)
        return run

    def popen(self, command: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """A run in the background; its output goes to files (apply prints its plan first: a pipe
        nobody reads until the end would fill up and stop it)."""
        n = len(self.procs)
        with open(self.root / f"run{n}.out", "w") as out, open(self.root / f"run{n}.err", "w") as err:
            proc = subprocess.Popen(self.argv(command, *args), cwd=self.work, env=self.env(env), stdout=out, stderr=err)
        self.procs.append(proc)
        return proc

    def record(self, proc: subprocess.Popen, args: tuple[str, ...], seconds: float, timeout: float = 60) -> Run:
        proc.wait(timeout=timeout)
        n = self.procs.index(proc)
        stdout, stderr = ((self.root / f"run{n}.{kind}").read_text(encoding="utf-8") for kind in ("out", "err"))
        run = Run(args, proc.returncode, stdout, stderr, seconds)
        self.runs.append(run)
        return run

    def post_instance(self, name: str, *tags: str) -> dict:
        """Create ``name`` behind the CLI's back (as another run or a person would), with ``tags``."""
        assert self.emulator is not None
        body = {
            "name": name,
            "element": {"key": "connectwisehd"},
            "tags": list(tags),
            "configuration": {
                "helpdesk.connectwise.username": "api1",
                "helpdesk.connectwise.password": self.password(name),
                "helpdesk.connectwise.server.url": "api-na.myconnectwise.net",
                "helpdesk.connectwise.company": "acme",
            },
        }
        secrets_header = f"User {self.user_secret}, Organization {self.org_secret}"
        answer = requests.post(f"{self.emulator.url}/instances", json=body, headers={"Authorization": secrets_header})
        assert answer.status_code == 200, answer.text
        return answer.json()

    # -- what the emulator holds -----------------------------------------------------------------

    def instances(self) -> list[dict]:
        return self.db.instances()

    def issued_tokens(self) -> set[str]:
        """Every token the emulator ever issued, including those of deleted instances."""
        uri = self.db_path.resolve().as_uri() + "?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            return {row[0] for row in conn.execute("SELECT token FROM issued_tokens")}

    def outputs_document(self) -> dict:
        return json.loads(self.outputs.read_text(encoding="utf-8"))

    # -- the checks ------------------------------------------------------------------------------

    def assert_converged(self, expected: list[str], outputs: dict | None = None) -> dict[str, dict]:
        """Exactly the declared instances exist, each once, each owned by the stack, each with its own
        password; every token of ``outputs`` (default: the outputs file) is the server's."""
        rows = self.instances()
        counts = Counter(r["name"] for r in rows)
        duplicates = {n: c for n, c in counts.items() if c > 1}
        assert not duplicates, f"duplicates: {sorted(duplicates.items())[:10]} ({len(duplicates)} names)"
        assert sorted(counts) == sorted(expected), (
            f"missing {sorted(set(expected) - set(counts))[:10]}, extra {sorted(set(counts) - set(expected))[:10]}"
        )
        marker = f"provisioner:stack={self.stack}"
        by_name = {r["name"]: r for r in rows}
        for name, row in by_name.items():
            assert marker in row["tags"], (name, row["tags"])
            assert row["configuration"]["helpdesk.connectwise.password"] == self.password(name)
        document = self.outputs_document() if outputs is None else outputs
        self.assert_tokens_match(document)
        assert sorted(document["instances"]) == sorted(expected)
        return by_name

    def assert_tokens_match(self, document: dict) -> None:
        """Every entry of an outputs document names a live instance by id, with its token."""
        by_id = {r["id"]: r for r in self.instances()}
        for name, entry in document["instances"].items():
            row = by_id.get(entry["id"])
            assert row is not None, f"outputs name {name} with id {entry['id']}, which does not exist"
            assert row["name"] == name and row["element"] == entry["element"] == "connectwisehd"
            assert entry["token"] == row["token"], f"token of {name} differs from the server's"

    def leaks(self) -> list[str]:
        """Where a canary or an issued token shows up outside the outputs file and ``output``'s stdout."""
        tokens = self.issued_tokens()
        secrets_ = [*self.canaries]
        found = []

        def search(where: str, text: str, tokens_ok: bool) -> None:
            for canary in secrets_:
                if canary in text:
                    found.append(f"canary {canary} in {where}")
            if not tokens_ok:
                for token in tokens:
                    if token in text:
                        found.append(f"a token in {where}")
                        break

        for i, run in enumerate(self.runs):
            search(f"run {i} {' '.join(run.args)[:60]} stdout", run.stdout, run.tokens_allowed_on_stdout)
            search(f"run {i} {' '.join(run.args)[:60]} stderr", run.stderr, False)
        for base in (self.work, self.tmp):
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                text = path.read_bytes().decode("utf-8", "replace")
                search(str(path.relative_to(self.root)), text, tokens_ok=path == self.outputs)
        return found

    def requests_started_after(self, moment: float) -> list[dict]:
        """Requests the emulator saw start after ``moment`` (time.time())."""
        late = []
        for request in self.db.requests():
            start = _epoch(request["ts"]) - request["durationMs"] / 1000.0
            if start > moment:
                late.append({**request, "start": start})
        return late


def _epoch(ts: str) -> float:
    """The emulator's request timestamp (2024-01-02T03:04:05.678Z, UTC) as time.time()."""
    whole, _, rest = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(rest or 0) / 1000.0


def fault_config(mode: str, rate: float, seed: int) -> FaultConfig:
    """One fault mode (or "mixed": every mode at ``rate``) with settings that keep runs short."""
    common = {"retry_after": 0.1, "slow_ms": 1500, "seed": seed}
    if mode == "mixed":
        return FaultConfig(
            error_rate=rate, throttle_rate=rate, reset_rate=rate, lost_rate=rate, slow_rate=rate, **common
        )
    return FaultConfig(**{f"{mode}_rate": rate}, **common)
