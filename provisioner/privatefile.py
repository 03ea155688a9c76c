"""Files only their owner may read, written so that no reader ever sees half of one.

The outputs file (tokens) and saved plans are written to a temporary file in the same directory,
created with mode 0600, flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import os
import tempfile

from .errors import UserError


def write_private(path: str, text: str, what: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600; ``what`` names the file in errors."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".provisioner-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UserError(
            f"cannot write {what} {path}: {exc.strerror or exc}", hint="check that the directory exists and is writable"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        _remove_quietly(temporary)
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
