"""``provisioner show FILE``: read a saved plan (``plan --out``) as ``plan`` printed it, offline."""

from __future__ import annotations

import click

from ..engine import savedplan
from ..errors import UserError
from ..manifest.yamlload import DEFAULT_MAX_BYTES
from .options import WITH_MARKDOWN, ShowArgs, output_option
from .run import EXIT_OK, Run, command


@command(ShowArgs)
@click.argument("file", type=click.Path(dir_okay=False))
@output_option(*WITH_MARKDOWN)
def show(run: Run, args: ShowArgs) -> int:
    """Print a plan saved with 'plan --out FILE' as plan printed it; reads nothing else, sends nothing.

    What the plan was made from (manifest, inputs, options, targets, time) goes to stderr.
    """
    saved = savedplan.load_if_plan(args.file, DEFAULT_MAX_BYTES)
    if saved is None:
        raise UserError(f"{args.file}: not a saved plan", hint="make one with: provisioner plan MANIFEST --out FILE")
    run.reporter.plan(saved.as_plan())
    data, sources = saved.data, saved.sources
    options = [key if value is True else f"{key}={','.join(value)}" for key, value in data["options"].items() if value]
    run.reporter.info(
        f"Saved plan {args.file}: stack {data['stack']!r}, made {data['createdAt']} by provisioner "
        f"{data['provisionerVersion']} from {sources.manifest}"
        + (f" with inputs {', '.join(sources.inputs)}" if sources.inputs else "")
        + (f", --set {', '.join(sources.set_keys)} (give them again to apply)" if sources.set_keys else "")
        + (f", options: {', '.join(options)}" if options else "")
        + f"; targets: {', '.join(f'{n} {u}' for n, u in data['targets'].items())}."
    )
    return EXIT_OK
