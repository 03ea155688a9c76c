"""Protection: instances that are never deleted or replaced by accident.

``protect: true`` puts the marker tag ``provisioner:protect`` on the live instance. The marker, not
the manifest, is what counts: an instance whose entry is gone from the manifest is still protected.
A plan never deletes or replaces a protected instance (``--prune``, ``destroy``, ``--allow-replace``,
extra copies); it shows the refusal as a ``protected`` change, which makes the command exit 1, like a
conflict, while the other changes proceed. Only ``--allow-destroy NAME`` (repeatable) lifts the
protection of the named instance for one run. ``protect: false`` removes the marker on the next apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..ownership import PROTECT_TAG


def is_protected(live: Any, desired: Any, allow_destroy: Iterable[str]) -> bool:
    """Marked on the server (or declared protected), and not named with --allow-destroy."""
    marked = PROTECT_TAG in live.tags or (desired is not None and desired.protect is True)
    names = {live.name} | ({desired.name} if desired is not None else set())
    return marked and not names & set(allow_destroy)


def refusal(what: str) -> str:
    """The reason shown for a refused delete or replace."""
    return (
        f"protected ({PROTECT_TAG}): {what} refused; pass --allow-destroy NAME to allow it for this run, "
        "or set protect: false and apply first"
    )
