"""Files the user names are written safely (issue 17, point 2), through the real CLI and emulator.

A path that exists and is not a regular file, a symlink to anything but a regular file, or a path in
a missing directory is refused before any request is sent: exit 1, a clear error, nothing written,
and the special file still what it was.
"""

from __future__ import annotations

import os
import stat

import pytest
from conftest import manifest_text, write


def _writes(db) -> list[dict]:
    return [r for r in db.requests() if r["method"] != "GET"]


@pytest.fixture
def manifest(cli):
    return write(cli.cwd, "manifest.yaml", manifest_text(count=1))


def _special(tmp_path, kind: str) -> str:
    if kind == "dev-null":
        return os.devnull
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "fifo-target")
        path.symlink_to(tmp_path / "fifo-target")
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "missing-directory":
        return str(tmp_path / "no-such-dir" / "out.json")
    return str(path)


KINDS = ["dev-null", "fifo", "directory", "symlink-to-fifo", "dangling-symlink", "missing-directory"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", [("apply", "--outputs"), ("plan", "--out")])
def test_a_path_that_is_not_a_regular_file_is_refused_before_any_request(cli, db, manifest, tmp_path, kind, command):
    path = _special(tmp_path, kind)
    before = os.lstat(path).st_mode if os.path.lexists(path) else None
    proc = cli.run(command[0], manifest, command[1], path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert path in proc.stderr or os.path.basename(path) in proc.stderr
    assert _writes(db) == [] and db.instances() == []
    after = os.lstat(path).st_mode if os.path.lexists(path) else None
    assert after == before  # /dev/null is still a device, the FIFO a FIFO, the link a link
    if kind == "dev-null":
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_symlink_to_a_regular_file_is_written_through_and_stays_a_link(cli, db, manifest, tmp_path):
    target = tmp_path / "real-outputs.json"
    target.write_text("{}")
    link = cli.cwd / "outputs.json"
    link.symlink_to(target)
    proc = cli.run("apply", manifest, "--outputs", "outputs.json")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert '"helpdesk-0"' in target.read_text()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_local_state_that_is_a_symlink_is_refused(cli, tmp_path):
    write(cli.cwd, "manifest.yaml", manifest_text(count=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cli.cwd / ".provisioner").symlink_to(elsewhere)
    proc = cli.run("apply", "manifest.yaml", "--local")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ".provisioner" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(elsewhere) == []


def test_local_state_with_a_planted_symlink_is_refused(cli, tmp_path):
    write(cli.cwd, "manifest.yaml", manifest_text(count=1))
    state = cli.cwd / ".provisioner"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (state / ".gitignore").symlink_to(victim)
    proc = cli.run("validate", "manifest.yaml")
    assert proc.returncode == 0
    proc = cli.run("plan", "manifest.yaml", "--local")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert victim.read_text() == "keep me"
