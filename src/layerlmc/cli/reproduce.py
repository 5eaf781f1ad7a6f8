from __future__ import annotations

from pathlib import Path

import click

from ..recipes import FIGURES, reproduce
from .trajectory import report_trajectory


@click.command("reproduce")
@click.argument("figure", type=click.Choice(sorted(FIGURES)))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/reproduce"), show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Train for this many epochs [default: 10].")
@click.option("--every", type=click.IntRange(min=1), default=2, show_default=True, help="Analyse every N-th epoch.")
@click.option("--max-examples", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Examples per split in the barrier evaluations (a fixed subset).")
@click.option("--device", default="auto", show_default=True)
def reproduce_command(figure: str, out: Path, epochs: int | None, every: int, max_examples: int, device: str) -> None:
    """Reproduce a study of the paper at CPU scale (fig1: layer-wise barriers over training;
    fig3: cumulative averaging from the input and the output side).

    Both figures share one training run (two 8-layer CNNs without normalisation on
    Fashion-MNIST, one initialization, different data order); rerunning resumes.
    """
    table, _, analysis = reproduce(figure, out, epochs=epochs, every=every, max_examples=max_examples, device=device)
    report_trajectory(table, analysis, "midpoint", "models")
