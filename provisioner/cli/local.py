"""``--local``: an embedded emulator whose state persists in ``.provisioner/emulator.db`` (no account
needed), in the user's working tree: kept private and out of version control (docs/secrets.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import UserError

STATE_DIR = ".provisioner"
DB_NAME = "emulator.db"
LOCAL_USER_SECRET = "local-user-secret"
LOCAL_ORGANIZATION_SECRET = "local-organization-secret"
GITIGNORE = "# made by provisioner --local: local emulator state, never to be committed\n*\n"


@dataclass(frozen=True)
class LocalApi:
    url: str
    user_secret: str
    organization_secret: str


@contextmanager
def local_api(enabled: bool, state_dir: str = STATE_DIR) -> Iterator[LocalApi | None]:
    """With --local, the emulator on a free loopback port for one command (imported only then)."""
    if not enabled:
        yield None
        return
    from ..emulator import Emulator, FaultConfig

    db_path = os.path.join(state_dir, DB_NAME)
    try:
        prepare_state_dir(state_dir)
        emulator = Emulator(db_path, LOCAL_USER_SECRET, LOCAL_ORGANIZATION_SECRET, faults=FaultConfig())
        url = emulator.start()
    except OSError as exc:
        raise UserError(
            f"cannot use the --local state directory {state_dir}: {exc.strerror or exc}",
            hint="run from a directory you can write to",
        ) from None
    try:
        yield LocalApi(url, LOCAL_USER_SECRET, LOCAL_ORGANIZATION_SECRET)
    finally:
        emulator.stop()
        private_files(state_dir)


def prepare_state_dir(state_dir: str) -> None:
    """Make the directory private (0700) with its .gitignore, and the database file 0600 before
    SQLite opens it (SQLite gives its -wal and -shm files the database file's mode)."""
    if os.path.islink(state_dir) or (os.path.lexists(state_dir) and not os.path.isdir(state_dir)):
        raise UserError(
            f"the --local state directory {state_dir} exists and is not a directory (or is a symlink)",
            hint=f"move it away; provisioner keeps its local state in a plain {STATE_DIR}/ directory",
        )
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for name in (".gitignore", DB_NAME):
        path = os.path.join(state_dir, name)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            raise UserError(
                f"{path} is not a regular file (a symlink, device, FIFO or directory)",
                hint=f"remove it; provisioner writes only regular files in {STATE_DIR}/",
            )
    # O_NOFOLLOW: a symlink planted in the state directory between the check and here is not followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
    ignore = os.open(os.path.join(state_dir, ".gitignore"), flags | os.O_TRUNC, 0o600)
    with os.fdopen(ignore, "w", encoding="utf-8") as handle:
        handle.write(GITIGNORE)
    os.close(os.open(os.path.join(state_dir, DB_NAME), flags, 0o600))
    private_files(state_dir)


def private_files(state_dir: str) -> None:
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for name in names:
        path = os.path.join(state_dir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, 0o600)
