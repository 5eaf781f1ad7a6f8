"""``layerlmc reproduce robustness``: the averaging direction against random directions of the
same norm (PAPER.md §4.1) on the training run of fig1/fig3."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import robustness
from . import pair


def reproduce_robustness(
    out: str | Path = "runs/reproduce", epochs: int | None = None, every: int = 2, samples: int = 5,
    max_examples: int = 2000, device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, Path]:
    """The averaging direction vs random directions of the same norm (PAPER.md §4.1) on the
    training run of fig1/fig3, every ``every``-th epoch, ``samples`` directions per group and base,
    on a fixed test subset. Returns the ``robustness.csv`` table and the analysis folder."""
    trained = pair.train_pair(pair.CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / "robustness"
    table = robustness(
        trained.model, trained.a, trained.b, trained.data, analysis, samples=samples, every=every, splits=["test"], max_examples=max_examples, device=device,
        progress=progress,
        config={"recipe": "robustness", "training": str(trained.run), "every": every, "samples": samples,
                "max_examples": max_examples},
    )
    return table, analysis
