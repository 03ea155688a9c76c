"""``provisioner init``: from nothing to a manifest that validates, and optionally a pipeline for it (an
example of ``examples/pipelines`` with this manifest and its variables in place). It never overwrites a
file: one already there stops init before it writes anything.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources

import click

from ..errors import UserError
from ..manifest.elements import ElementRegistry
from ..manifest.starter import Starter, elements_named, stack_name, starter_manifest
from .options import DIRECTORY, FILE, argument, option
from .run import EXIT_OK, Run, command

PIPELINES = {  # --ci: the example it starts from, and where the platform reads it
    "github": ("github-actions.yml", os.path.join(".github", "workflows", "provision.yml")),
    "gitlab": ("gitlab-ci.yml", ".gitlab-ci.yml"),
}


@dataclass(frozen=True)
class InitArgs:
    elements: tuple[str, ...] = argument(nargs=-1, required=True, metavar="ELEMENT...")
    out: str = option("--out", default="provisioner.yaml", type=FILE)
    stack: str | None = option("--stack", default=None)
    schemas: tuple[str, ...] = option("--schemas", multiple=True, type=DIRECTORY)
    ci: str | None = option("--ci", type=click.Choice(sorted(PIPELINES)), default=None)


@command(InitArgs, short_help="Write a commented starter manifest declaring one instance of each ELEMENT.")
def init(run: Run, args: InitArgs) -> int:
    """Write a commented starter manifest declaring one instance of each ELEMENT (e.g. connectwisehd).

    Every required key of the element's schema (built in, or pulled into a --schemas DIR) reads an
    environment variable; the variables are listed on stderr. Refuses to overwrite any file.
    """
    chosen = elements_named(ElementRegistry.load(args.schemas), args.elements)
    folder = os.path.dirname(os.path.abspath(args.out))
    invocation = " ".join(["provisioner init", *args.elements, *(f"--schemas {d}" for d in args.schemas)])
    starter = starter_manifest(chosen, stack_name(args.stack, os.path.basename(folder)), invocation, args.out)
    if args.schemas:  # validate and plan find the schemas through the manifest itself
        listed = json.dumps([os.path.relpath(d, folder) for d in args.schemas])
        starter.text = starter.text.replace("\ninputs:\n", f"\nschemas: {listed}  # element schemas\ninputs:\n", 1)
    files = {args.out: starter.text}
    if args.ci is not None:
        example, path = PIPELINES[args.ci]
        files[path] = _pipeline(example, starter, os.path.relpath(args.out))
    if existing := [path for path in files if os.path.lexists(path)]:  # checked before anything is written
        raise UserError(
            f"{existing[0]} already exists; init never overwrites a file", hint="move it away, or give --out"
        )
    for path, text in files.items():
        _create(path, text)
        run.reporter.info(f"wrote {path}")
    run.reporter.info("set these variables before validate (secrets from your secret store, never in a file):")
    for name, element, key in starter.variables:
        run.reporter.info(f"  {name}  ({element}: {key})")
    run.reporter.info(f"then: provisioner validate {args.out}")
    return EXIT_OK


def _create(path: str, text: str) -> None:
    """Create the file (never replacing one that appeared meanwhile) and its directory."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise UserError(f"{path} already exists; init never overwrites a file") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _pipeline(example: str, starter: Starter, manifest: str) -> str:
    """The example pipeline for this manifest: its path, and its variables where the example has its own."""
    try:  # packaged as provisioner.pipelines, or examples/pipelines in a checkout
        examples = resources.files("provisioner.pipelines")
    except ModuleNotFoundError:
        examples = resources.files("provisioner") / ".." / "examples" / "pipelines"
    text = examples.joinpath(example).read_text(encoding="utf-8")
    names = [name for name, _, _ in starter.variables]
    text = re.sub(r"(?m)^(\s*(?:PROVISIONER_)?MANIFEST: ).*$", lambda m: m[1] + manifest, text)
    text = re.sub(r"(?m)^# The test suite runs .*\n", "", text)
    listed = r"(?m)^(#.*)CE_ORGANIZATION_SECRET(?:, [A-Z][A-Z0-9_]*)*(?:,?\s+(?:#\s+)?and [A-Z][A-Z0-9_]*)?"
    text = re.sub(listed, lambda m: m[1] + "CE_ORGANIZATION_SECRET and the manifest's variables (below)", text)
    header = "# The variables the manifest reads (set them where the pipeline keeps secrets):\n"
    header += "".join(f"#   {name}\n" for name in names)
    body = re.search(r"(?m)^[^#\n]", text)
    at = body.start() if body else 0
    text = text[:at] + header + text[at:]
    own = re.compile(r"(?m)^  (?!CE_)([A-Z][A-Z0-9_]*): \$\{\{ secrets\.\1 \}\}\n")
    first = own.search(text)
    if first is not None:
        lines = "".join(f"  {name}: ${{{{ secrets.{name} }}}}\n" for name in names)
        text = text[: first.start()] + lines + own.sub("", text[first.start() :])
    return text
