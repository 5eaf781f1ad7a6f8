from __future__ import annotations

import click

from .. import specs  # noqa: F401  (registers built-ins)
from ..core.groups import SCHEMES
from ..registry import datasets, models


@click.command("ls")
@click.argument("what", type=click.Choice(["models", "datasets", "schemes"]))
def ls_command(what: str) -> None:
    """List the built-in models, datasets or layer-group schemes."""
    if what == "schemes":
        for name in SCHEMES:
            click.echo(name)
        return
    registry = models if what == "models" else datasets
    for entry in registry.entries():
        also = f" (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        click.echo(f"{entry.name:16s} {entry.summary}{also}")
