from __future__ import annotations

from pathlib import Path

import click

from ..api import report as write_report
from ..recipes.quickstart import run_quickstart
from .barriers import report


@click.command("quickstart")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-examples", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Examples evaluated per split (a fixed, seeded subset).")
@click.option("--device", default="auto", show_default=True)
def quickstart_command(out: Path, epochs: int, max_examples: int, device: str) -> None:
    """Train two small CNNs on Fashion-MNIST from one initialization (different data order) and
    show their full-network, layer-wise and cumulative barriers."""
    table, analysis = run_quickstart(out, epochs=epochs, max_examples=max_examples, device=device)
    report(table, analysis, ["midpoint"], ["models"])
    # the training run's page shows its training curves and this analysis together
    click.echo(f"report:   {write_report(analysis.parent)}  (open it in a browser)")
