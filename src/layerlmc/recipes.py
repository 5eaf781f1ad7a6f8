"""``layerlmc reproduce``: the paper's studies at a scale that fits two CPU cores.

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

from .analyses import find_checkpoints, trajectory
from .config import TrainConfig, load_config
from .errors import unknown
from .specs import build_data, build_model
from .train import train_runs

CONFIG = Path(__file__).parent / "configs" / "pair_fmnist_cnn.yaml"
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
    out = Path(out)
    overrides = [f"device={device}"] + ([f"epochs={epochs}"] if epochs else [])
    config: TrainConfig = load_config(TrainConfig, CONFIG, overrides)
    run = train_runs(config, out / config.name, progress=progress)
    model = build_model(config.model.name, config.model.args)
    data = build_data(config.data.name, config.data.args)
    analysis = out / figure
    settings = FIGURES[figure]
    barriers, distances = trajectory(
        model, find_checkpoints(run / "checkpoints" / "a"), find_checkpoints(run / "checkpoints" / "b"), data,
        analysis, every=every, max_examples=max_examples, device=device, progress=progress,
        layerwise=settings["layerwise"], cumulative=settings["cumulative"],
        config={"recipe": figure, "training": str(run), "every": every, "max_examples": max_examples,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}},
    )
    return barriers, distances, analysis
