"""``layerlmc theory``: layer cuts of deep linear networks and the paper's toy (PAPER.md §3)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..analyses.theory.deep_linear import ALPHAS, LOSSES, count_convex, non_convex
from ..api import deep_linear_study

_SIZE = click.IntRange(min=1)


@click.group("theory")
def theory_command() -> None:
    """Theorem 4.1 checked: single-layer cuts of deep linear networks are convex, pairs not.

    \b
    Examples:
      layerlmc theory deep-linear --depth 4 --width 5 --loss ce
      layerlmc theory toy --out runs/theory/toy
    """


@theory_command.command("deep-linear")
@click.option("--depth", type=_SIZE, default=4, show_default=True, help="Number of layers L.")
@click.option("--width", type=_SIZE, default=5, show_default=True,
              help="Width of every layer (inputs and outputs/classes too).")
@click.option("--loss", type=click.Choice(LOSSES), default="mse", show_default=True,
              help="mse: squared error on a noisy linear teacher; ce: cross-entropy on its "
                   "argmax labels.")
@click.option("--examples", type=_SIZE, default=256, show_default=True,
              help="Synthetic training examples (the loss along the cuts is measured on them).")
@click.option("--steps", type=_SIZE, default=1000, show_default=True,
              help="Gradient-descent updates (batch 32) per network.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the data, the two initializations and the data orders.")
@click.option("--alphas", default=ALPHAS, show_default=True,
              help="Alpha grid: a list 0,0.5,1 or a range start:stop:count (≥ 3 points).")
@click.option("--same-init", is_flag=True, help="Start both networks from one initialization.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 0.1 for mse, 0.2 for ce].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/theory/deep-linear-LOSS-dDEPTH-wWIDTH-sSEED].")
@click.option("--plots/--no-plots", default=True, show_default=True)
def deep_linear_command(depth: int, width: int, loss: str, examples: int, steps: int, seed: int,
                        alphas: str, same_init: bool, lr: float | None, out: Path | None,
                        plots: bool) -> None:
    """Train two deep linear networks and trace the loss along every layer cut.

    A cut blends some layers, (1−α)·Wk_a + α·Wk_b, and takes the others from a base (a or b):
    each single layer, each pair of layers, and the full path. The table says, per cut,
    whether the curve is convex on the grid (its smallest second difference), and its barrier
    over the chord between its ends; for mse also the exact minimum of L''(α) on [0, 1].

    \b
    Examples:
      layerlmc theory deep-linear
      layerlmc theory deep-linear --depth 5 --width 3 --loss ce --seed 1 --out runs/dl
    """
    out = out or Path("runs/theory") / f"deep-linear-{loss}-d{depth}-w{width}-s{seed}"
    _, report = deep_linear_study(out, depth, width, loss, examples, steps, seed, alphas,
                                  same_init=same_init, lr=lr, plots=plots)
    click.echo(f"convexity of the loss along each cut (depth {depth}, width {width}, {loss}):")
    click.echo(_format(report))
    click.echo("")
    counts = count_convex(report)
    names = {"layer": "single-layer cuts", "pair": "pair cuts", "full": "full path"}
    for cut, (convex, total) in counts.items():
        click.echo(f"{names.get(cut, cut) + ':':19} {convex}/{total} convex")
    broken = non_convex(report)
    if not broken.empty:
        shown = ", ".join(_cut_name(row) for row in broken.itertuples(index=False))
        click.echo(f"not convex (multi-layer): {shown}")
    click.echo("")
    click.echo(f"curves:    {out / 'cuts.csv'}")
    click.echo(f"convexity: {out / 'convexity.csv'}")
    if plots:
        click.echo(f"figure:    {out / 'figures' / 'deep_linear_cuts.png'}")


@theory_command.command("toy")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/theory/toy"),
              show_default=True, help="Run folder.")
@click.option("--plots/--no-plots", default=True, show_default=True)
def toy_command(out: Path, plots: bool) -> None:
    """The paper's Figure 4: f(x) = w2·w1·x, loss (w1·w2 − 1)², minima A = (0.5, 2), B = (2, 0.5).

    Blending both weights crosses a barrier (0.316 at α=½); blending only w2 stays lower
    (0.141), only w1 goes high (2.25); each single-weight path is a convex parabola.

    \b
    Example:
      layerlmc theory toy --out runs/theory/toy
    """
    from ..recipes.fig4 import fig4

    summary = fig4(out, plots=plots)
    click.echo("loss along the straight paths out of A (base A for the single-weight paths):")
    click.echo(_format(summary))
    click.echo("")
    click.echo(f"paths:   {out / 'paths.csv'}")
    click.echo(f"summary: {out / 'summary.csv'}")
    if plots:
        click.echo(f"figure:  {out / 'figures' / 'fig4.png'}")


def _cut_name(row) -> str:
    base = "" if row.base is None or pd.isna(row.base) else f" (base {row.base})"
    return f"{row.cut} {row.layers}{base}"


def _format(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    shown = table.map(cell)
    shown.index = [""] * len(shown)
    return shown.to_string()
