"""Files the user names (outputs, saved plans, imported manifests), written safely (docs/commands.md,
Tokens): the path, a regular file or a new one, is checked before anything is written and again before
the rename of a fsynced temporary file with the final mode (``--outputs /dev/null`` as root keeps the device).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from .errors import UserError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file that is not a regular one is, in words ("a directory", "a FIFO (named pipe)" ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def checked_path(path: str, what: str) -> str:
    """The path to replace (a symlink's regular target), or a UserError naming what is there."""
    if not path or "\0" in path:
        raise UserError(f"no usable path for the {what}", hint="give a file name")
    target = os.path.abspath(path)
    if os.path.islink(target):
        target = os.path.realpath(target)
        if not os.path.lexists(target):
            raise UserError(
                f"cannot write the {what} {path}: it is a symlink to {target}, which does not exist",
                hint="point the link at a regular file, or name another path",
            )
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UserError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise UserError(
            f"refusing to write the {what} to {path}: it is {kind_of(mode)}",
            hint="name a regular file (it is replaced whole), or a new one",
        )
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise UserError(
            f"cannot write the {what} {path}: the directory {os.path.dirname(path) or parent} does not exist",
            hint="create the directory first; provisioner does not create directories for its outputs",
        )
    return target


def write_private(path: str, text: str, what: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically with ``mode`` (0600: only the owner may read it)."""
    target = checked_path(path, what)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".provisioner-", suffix=".tmp", dir=os.path.dirname(target))
    except OSError as exc:
        raise UserError(
            f"cannot write the {what} {path}: {exc.strerror or exc}", hint="check that the directory is writable"
        ) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if checked_path(path, what) != target:  # replaced by something else while we wrote
            raise UserError(f"the {what} {path} changed while it was being written", hint="run the command again")
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
        raise
