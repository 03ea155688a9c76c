"""``--local``: run against an embedded emulator whose state persists in ``.provisioner/``.

This is how a new user's first run works with no account and no variable to set, and how a second
run shows that nothing changes: the emulator's SQLite file stays in ``.provisioner/emulator.db`` of
the current directory between runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .emulator import Emulator, FaultConfig

STATE_DIR = ".provisioner"
LOCAL_USER_SECRET = "local-user-secret"
LOCAL_ORGANIZATION_SECRET = "local-organization-secret"


@dataclass(frozen=True)
class LocalApi:
    url: str
    user_secret: str
    organization_secret: str
    db_path: str


@contextmanager
def local_api(state_dir: str = STATE_DIR) -> Iterator[LocalApi]:
    """Start the embedded emulator on a free loopback port for the duration of one command."""
    os.makedirs(state_dir, exist_ok=True)
    db_path = os.path.join(state_dir, "emulator.db")
    emulator = Emulator(db_path, LOCAL_USER_SECRET, LOCAL_ORGANIZATION_SECRET, faults=FaultConfig())
    url = emulator.start()
    try:
        yield LocalApi(url, LOCAL_USER_SECRET, LOCAL_ORGANIZATION_SECRET, db_path)
    finally:
        emulator.stop()
