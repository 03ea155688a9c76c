"""The stages import downwards only: the layout in the tree is the architecture, and this test keeps it.

It reads the imports of every module under provisioner/ (with ast: nothing is imported) and checks
them against the layers: cli may import anything; engine may import api, manifest and the shared
basics, never cli; api and manifest import only the shared basics (not each other); the shared basics
import only each other; the emulator imports nothing of provisioner outside provisioner/emulator
except the shared basics.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "provisioner"
BASICS = {"provisioner", "errors", "secret", "closedsets", "ownership", "interrupt", "privatefile", "urls"}
ALLOWED = {  # layer -> the layers it may import (a layer may always import itself)
    "cli": {"engine", "api", "manifest", "emulator", "basics", "entry"},
    "engine": {"api", "manifest", "basics"},
    "api": {"basics"},
    "manifest": {"basics"},
    "emulator": {"basics"},
    "basics": set(),
    "entry": {"cli", "basics"},
}


def layer(module: str) -> str:
    """The layer of a dotted module name under provisioner."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "provisioner"
    if head in ("cli", "engine", "api", "manifest", "emulator"):
        return head
    if head == "__main__":
        return "entry"
    assert head in BASICS, f"{module}: a module outside every layer; add it to a layer in this test"
    return "basics"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every provisioner module the file imports, by absolute dotted name (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "provisioner")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] != "provisioner":
                continue
            # ``from .m import x`` imports the submodule m.x, or a name of m
            found.update(_submodule(origin, a.name) for a in node.names)
    return found


def _submodule(package: str, name: str) -> str:
    where = PACKAGE.parent.joinpath(*package.split("."), name)
    return f"{package}.{name}" if where.with_suffix(".py").is_file() or where.is_dir() else package


MODULES = sorted(PACKAGE.rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in MODULES:
        source = module_name(path)
        mine = layer(source)
        for target in sorted(imports(path)):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                found.append(f"{source} ({mine}) imports {target} ({theirs})")
    return found


def test_every_module_is_read():
    assert len(MODULES) > 40
    assert {layer(module_name(p)) for p in MODULES} == set(ALLOWED)


# Imports against the layers in modules that other branches of issue 16 own, reported to them: the
# API reads a manifest's default URL and target type and an element's OAuth key name.
KNOWN = {
    "provisioner.api.pull (api) imports provisioner.manifest.load (manifest)",
    "provisioner.api.pull (api) imports provisioner.manifest.targets (manifest)",
    "provisioner.api.schemagen (api) imports provisioner.manifest.elements (manifest)",
}


def test_the_layers_are_kept():
    assert sorted(set(violations()) - KNOWN) == []


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("provisioner.cli.main", "provisioner.engine.stages", True),
        ("provisioner.engine.savedplan", "provisioner.cli.report", False),
        ("provisioner.api.live", "provisioner.manifest.desired", False),
        ("provisioner.manifest.render", "provisioner.secret", True),
        ("provisioner.emulator.server", "provisioner.api.wire", False),
        ("provisioner.ownership", "provisioner.engine.plan", False),
    ],
)
def test_the_rule_itself(source, target, allowed):
    """The check tells an allowed import from a forbidden one (so that an empty list means something)."""
    mine, theirs = layer(source), layer(target)
    assert (theirs == mine or theirs in ALLOWED[mine]) is allowed


def test_relative_imports_are_resolved(tmp_path):
    assert "provisioner.cli.report" in imports(PACKAGE / "cli" / "run.py")
    assert "provisioner.engine.stages" in imports(PACKAGE / "cli" / "run.py")
    assert "provisioner.errors" in imports(PACKAGE / "engine" / "plan.py")
