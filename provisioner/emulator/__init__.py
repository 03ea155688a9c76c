"""The built-in Cloud Elements API emulator: a loopback HTTP server with SQLite state and fault
injection, used by every test and by a new user's first run (``provisioner emulator``)."""

from .faults import ENV_VAR, FaultConfig
from .server import Emulator
from .store import EmulatorDB

__all__ = ["ENV_VAR", "Emulator", "EmulatorDB", "FaultConfig"]
