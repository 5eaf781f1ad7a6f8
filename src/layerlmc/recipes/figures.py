"""``layerlmc reproduce fig1|fig3``: the paper's Figures 1 and 3 at a scale that fits two CPU
cores.

The paper trains ResNet-18 without normalisation on CIFAR-10 for 200 epochs (PAPER.md §2.1);
here the same protocol runs on Fashion-MNIST with an 8-layer CNN without normalisation: two
runs from one initialization that differ only in data order, a checkpoint every epoch,
barriers against the two full models at α=½ (the paper's definition), on fixed subsets of
train and test. ``configs/pair_fmnist_cnn.yaml`` is the training config; the paper's own
setting needs a GPU and the CIFAR-10 files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import trajectory
from ..errors import unknown
from . import pair

FIGURES = {
    "fig1": {"layerwise": True, "cumulative": ()},
    "fig3": {"layerwise": False, "cumulative": ("shallow", "deep")},
}


def reproduce(
    figure: str, out: str | Path = "runs/reproduce", epochs: int | None = None, every: int = 2,
    max_examples: int = 5000, device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Train the pair (once; shared by every figure) and analyse it as ``figure`` does.

    Returns the barrier table, the distance table and the analysis folder.
    """
    if figure not in FIGURES:
        raise unknown("figure", figure, FIGURES)
    trained = pair.train_pair(pair.CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / figure
    settings = FIGURES[figure]
    barriers, distances = trajectory(
        trained.model, trained.a, trained.b, trained.data, analysis, every=every, max_examples=max_examples, device=device, progress=progress,
        layerwise=settings["layerwise"], cumulative=settings["cumulative"],
        config={"recipe": figure, "training": str(trained.run), "every": every, "max_examples": max_examples,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}},
    )
    return barriers, distances, analysis
