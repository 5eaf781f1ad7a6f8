"""``layerlmc reproduce fig4``: the paper's toy network f(x) = w2·w1·x, exact (PAPER.md §3)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analyses.theory.toy import A, B, toy_study


def fig4(out: str | Path = "runs/theory/toy", progress: bool | None = None,
         plots: bool = True) -> pd.DataFrame:
    """The toy study in the run folder ``out`` (:func:`~layerlmc.analyses.theory.toy.toy_study`)
    and its figure ``figures/fig4.png`` and ``.pdf`` (left: the loss surface over (w1, w2), log
    colour scale, with the hyperbola of minima and the three paths; right: loss vs α along each
    path). Returns the summary table."""
    summary = toy_study(out, progress=progress)
    if plots:
        from ..plots.theory import plot_toy

        paths = pd.read_csv(Path(out) / "paths.csv")
        plot_toy(paths, Path(out) / "figures" / "fig4", a=A, b=B)
    return summary
