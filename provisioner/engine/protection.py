"""Protection (docs/ownership.md): the ``provisioner:protect`` marker on the server, not the manifest,
is what counts; a plan shows a refused delete or replace as a ``protected`` change (exit 1), and only
``--allow-destroy NAME`` lifts it for one run.
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
    return (
        f"protected ({PROTECT_TAG}): {what} refused; pass --allow-destroy NAME to allow it for this run, "
        "or set protect: false and apply first"
    )
