"""Closed sets are types (actions, statuses, diff operations, severities, drift categories), and their
members are still the documented strings: the JSON documents, the text output and saved plans read
exactly as they did when these were bare strings."""

from __future__ import annotations

import json

import pytest

from provisioner.cli.report import _PAST, _SUMMARY, _SYMBOLS
from provisioner.engine.apply import Status
from provisioner.engine.diff import DiffOp
from provisioner.engine.drift import CATEGORIES
from provisioner.engine.plan import ACTIONS, REFUSALS, WRITES, Action

# The values of the documented JSON format (README "JSON output"), in the order of its summaries.
DOCUMENTED = [
    (
        Action,
        ["create", "update", "rename", "replace", "delete", "noop", "conflict", "protected", "adopt"]
        + ["disable", "enable", "reauthenticate"],
    ),
    (Status, ["ok", "failed", "skipped"]),
    (DiffOp, ["add", "change", "remove"]),
]


@pytest.mark.parametrize(("enum", "values"), DOCUMENTED, ids=lambda x: getattr(x, "__name__", ""))
def test_members_are_the_documented_strings_in_order(enum, values):
    assert [m.value for m in enum] == values
    for member, value in zip(enum, values, strict=True):
        assert member == value and hash(member) == hash(value)
        assert str(member) == value and f"{member}" == value and f"{member:>12}" == f"{value:>12}"
        assert format(member) == value and " ".join([member]) == value
        assert json.dumps({member: [member]}) == json.dumps({value: [value]})
        assert json.dumps({member: member}, indent=2, sort_keys=True) == json.dumps({value: value}, indent=2)
        assert enum(value) is member


def test_drift_categories_are_the_documented_strings():
    assert CATEGORIES == (
        *("changed", "secret", "missing", "extra-copy", "unmanaged-namesake", "undeclared", "renamed"),
        *("disabled", "enabled"),
    )


def test_every_action_is_exactly_one_of_write_refusal_noop():
    assert ACTIONS == tuple(Action)
    assert WRITES == (
        *(Action.CREATE, Action.UPDATE, Action.RENAME, Action.REPLACE, Action.DELETE, Action.ADOPT),
        *(Action.DISABLE, Action.ENABLE, Action.REAUTHENTICATE),
    )
    assert REFUSALS == (Action.CONFLICT, Action.PROTECTED)
    assert sorted([*WRITES, *REFUSALS, Action.NOOP]) == sorted(Action)


def test_every_action_has_a_symbol_and_every_write_a_past_tense():
    assert set(_SYMBOLS) == set(Action)
    assert len({symbol for symbol, _style in _SYMBOLS.values()}) == len(Action)
    assert tuple(_PAST) == WRITES  # in this order in the Markdown apply table
    assert sorted(_SUMMARY) == sorted(WRITES)  # apply's summary line names every write
    assert [_PAST[a] for a in WRITES] == ["created", "updated", "renamed", "replaced", "deleted", "adopted"] + [
        "disabled",
        "enabled",
        "re-authenticated",
    ]
