"""``--target`` and ``--exclude`` (docs/commands.md, Targeting): declared instances match on what the
manifest declares, undeclared owned ones on what the server holds; a left-out one's live copies stay untouched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..ownership import user_tags


@dataclass(frozen=True)
class Pattern:
    kind: str  # "name", "element" or "tag"
    value: str

    def matches(self, name: str, element: str | None, tags: Collection[str], aliases: frozenset[str]) -> bool:
        if self.kind == "element":
            return element == self.value or self.value in aliases
        if self.kind == "tag":
            return self.value in tags
        return fnmatch.fnmatchcase(name, self.value)


def parse(text: str, option: str) -> Pattern:
    key, sep, value = text.partition("=")
    if not sep:
        if not text.strip():
            raise UserError(f"{option} needs a pattern", hint="a name glob (crm-*), element=KEY or tag=T")
        return Pattern("name", text)
    if key not in ("element", "tag") or not value:
        raise UserError(f"{option} {text!r} is not a pattern", hint="use a name glob (crm-*), element=KEY or tag=T")
    return Pattern(key, value)


@dataclass(frozen=True)
class Selection:
    targets: tuple[Pattern, ...] = ()
    excludes: tuple[Pattern, ...] = ()

    @classmethod
    def of(cls, targets: Iterable[str], excludes: Iterable[str]) -> Selection:
        return cls(tuple(parse(t, "--target") for t in targets), tuple(parse(e, "--exclude") for e in excludes))

    @property
    def active(self) -> bool:
        return bool(self.targets or self.excludes)

    def _selects(self, name: str, element: str | None, tags: Collection[str], aliases: frozenset[str]) -> bool:
        wanted = not self.targets or any(p.matches(name, element, tags, aliases) for p in self.targets)
        return wanted and not any(p.matches(name, element, tags, aliases) for p in self.excludes)

    def selects_desired(self, desired: Any) -> bool:
        return self._selects(desired.name, desired.element, desired.tags or (), frozenset())

    def selects_live(self, live: Any, aliases: frozenset[str]) -> bool:
        return self._selects(live.name, live.element, user_tags(live.tags), aliases)


def restrict(
    selection: Selection,
    desired: list[Any],
    live_by_target: Mapping[str, list[Any]],
    aliases: Mapping[str | None, frozenset[str]],
) -> tuple[list[Any], dict[str, list[Any]], int]:
    """The selected declared instances, the live ones the plan may see (none under a left-out declared or
    old name; undeclared ones that match), and how many declared instances were left out."""
    chosen = [d for d in desired if selection.selects_desired(d)]
    kept_names = _names(chosen)
    left_names = _names([d for d in desired if not selection.selects_desired(d)])
    live: dict[str, list[Any]] = {}
    for target, instances in live_by_target.items():
        live[target] = [
            i
            for i in instances
            if (target, i.name) in kept_names
            or ((target, i.name) not in left_names and selection.selects_live(i, aliases.get(i.element, frozenset())))
        ]
    return chosen, live, len(desired) - len(chosen)


def _names(desired: Iterable[Any]) -> set[tuple[str, str]]:
    return {(d.target, n) for d in desired for n in (d.name, *d.previous_names)}
