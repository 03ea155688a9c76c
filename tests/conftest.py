"""Shared fixtures: a real emulator on loopback, and the real CLI run against it.

Flow tests run the CLI's entry point, ``provisioner.cli.main.main(argv)``, with the arguments a user
would type, against an emulator served over loopback from this test process, then assert on what the
emulator's database holds and on the requests it received (``EmulatorDB``), never on mocks. The CLI
runs in this process (click's ``CliRunner`` isolation: its own stdin, stdout, stderr and environment)
unless a process boundary is under test: ``Cli.run_process`` runs ``python -m provisioner``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner

from provisioner.cli.main import main
from provisioner.emulator import Emulator, EmulatorDB, FaultConfig
from provisioner.secret import REDACTOR

REPO = Path(__file__).resolve().parent.parent
USER_SECRET = "test-user-secret-5f1c0a"
ORG_SECRET = "test-org-secret-9b27e4"
ONE_RUN_AT_A_TIME = threading.Lock()  # an in-process run borrows the process's cwd, environment and stdio


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml's addopts) starts two workers a core: most tests wait on the
    emulator's latency or on a child process, not on the processor."""
    return 2 * (os.cpu_count() or 1)


@dataclass
class Cli:
    """Runs the real command line with a clean environment pointed at one emulator."""

    cwd: Path
    env: dict

    def run(
        self, *args: str, env: dict | None = None, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """The CLI in this process; ``provisioner emulator`` (it serves until a signal) in its own."""
        if args and args[0] == "emulator":
            return self.run_process(*args, env=env, input=input, timeout=timeout)
        return run_in_process([*map(str, args)], {**self.env, **(env or {})}, self.cwd, input)

    def run_process(
        self, *args: str, env: dict | None = None, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """``python -m provisioner`` in a child process, for what needs a process boundary."""
        return subprocess.run(
            [sys.executable, "-m", "provisioner", *map(str, args)],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str, env: dict | None = None) -> tuple[int, dict]:
        proc = self.run(*args, "--output", "json", env=env)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"stdout is not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            ) from None


def run_in_process(argv: list[str], env: dict, cwd: Path, input: str | None) -> subprocess.CompletedProcess:
    """``main(argv)`` as a fresh process would see it: exactly ``env`` as the environment, ``cwd`` as
    the working directory, no secret known to the redactor, and all of it restored afterwards.
    (A hang is cut by pytest-timeout, ``timeout`` in pyproject.toml, not by a per-run timeout.)"""
    if not ONE_RUN_AT_A_TIME.acquire(blocking=False):
        raise AssertionError("in-process CLI runs cannot overlap: run them one after another, or use run_process")
    environment = {name: None for name in os.environ if name not in env} | env
    previous_cwd, gc_threshold = os.getcwd(), gc.get_threshold()
    REDACTOR.clear()
    code: int | str | None = 0
    try:
        with CliRunner().isolation(input=input, env=environment) as (stdout, stderr, _):
            os.chdir(cwd)
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code
            sys.stdout.flush()
            sys.stderr.flush()
            out, err = _text(stdout.getvalue()), _text(stderr.getvalue())
    finally:
        os.chdir(previous_cwd)
        gc.unfreeze()  # main() tunes the collector for one long run (gc.freeze, thresholds): undone here
        gc.set_threshold(*gc_threshold)
        REDACTOR.clear()
        ONE_RUN_AT_A_TIME.release()
    returncode = code if isinstance(code, int) else 0 if code is None else 1
    return subprocess.CompletedProcess(["provisioner", *argv], returncode, out, err)


def _text(data: bytes) -> str:
    """Decoded with universal newlines, as ``subprocess.run(text=True)`` reads a child's output."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


@pytest.fixture
def emulator(tmp_path):
    server = Emulator(tmp_path / "emulator.db", USER_SECRET, ORG_SECRET, faults=FaultConfig())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db(emulator, tmp_path) -> EmulatorDB:
    return EmulatorDB(tmp_path / "emulator.db")


@pytest.fixture
def api(emulator):
    """``api(method, path, **kw)``: a request to the emulator with the organization's credentials, as
    a person's script would make it (an instance made by hand); the answer's JSON, asserted 200."""
    session = requests.Session()
    session.headers["Authorization"] = f"User {USER_SECRET}, Organization {ORG_SECRET}"

    def call(method, path, **kw):
        answer = session.request(method, emulator.url + path, timeout=10, **kw)
        assert answer.status_code == 200, answer.text
        return answer.json() if answer.content else None

    yield call
    session.close()


def base_env() -> dict:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")}
    keep["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    keep["NO_COLOR"] = "1"
    return keep


@pytest.fixture
def cli(emulator, tmp_path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **base_env(),
        "CE_API_URL": emulator.url,
        "CE_USER_SECRET": USER_SECRET,
        "CE_ORGANIZATION_SECRET": ORG_SECRET,
    }
    return Cli(work, env)


def listed(client, tags=()) -> list[dict]:
    """Every instance of a client's listing, all pages joined."""
    return [item for page in client.instance_pages(tags) for item in page]


def write(directory: Path, name: str, text: str) -> Path:
    """Write a dedented file (a manifest, inputs, a template) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


class EnvTagLoader(yaml.SafeLoader):
    """Reads what import writes, independently of provisioner's loader: ``!env NAME`` as {"!env": NAME}."""


EnvTagLoader.add_constructor("!env", lambda loader, node: {"!env": loader.construct_scalar(node)})


def load_imported(text: str):
    return yaml.load(text, Loader=EnvTagLoader)


CW_INSTANCE = """
  - name: helpdesk-{n}
    element: connectwisehd
    tags: [helpdesk]
    configuration:
      helpdesk.connectwise.username: api1
      helpdesk.connectwise.password: "{{{{ env.CW_PASSWORD | default('pw-{n}') }}}}"
      helpdesk.connectwise.server.url: api-na.myconnectwise.net
      helpdesk.connectwise.company: acme
"""


def manifest_text(stack: str = "tests", count: int = 2, extra: str = "") -> str:
    body = "".join(CW_INSTANCE.format(n=i) for i in range(count))
    return f"apiVersion: provisioner/v1\nstack: {stack}\ninstances:\n{body.strip(chr(10)) if count else ' []'}\n{extra}"
