"""The main job: two small CNNs on Fashion-MNIST from one initialization, then their barriers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import barriers
from ..config import TrainConfig, validate
from ..core.checkpoints import load_state_dict
from ..data.fashion_mnist import fashion_mnist
from ..models import cnn
from ..train import checkpoint_path, train_runs


def quickstart_config(epochs: int = 2, device: str = "auto") -> TrainConfig:
    """Two runs from the initialization drawn with seed 0, differing only in data order (seeds 1, 2)."""
    return validate(TrainConfig, {
        "name": "quickstart", "runs": 2, "init": "same", "init_seed": 0, "order_seeds": [1, 2],
        "epochs": epochs, "batch_size": 64, "model": {"name": "cnn"}, "data": {"name": "fashion-mnist"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": "constant"}, "eval_max_examples": 10000, "device": device,
    })


def run_quickstart(
    out: str | Path = "runs/quickstart",
    epochs: int = 2,
    max_examples: int | None = 10000,
    device: str = "auto",
    progress: bool | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Train (or resume) the pair into ``out``, then full, layer-wise and shallow/deep cumulative
    barriers into ``out/analysis``; rerunning finishes an interrupted quickstart.

    Returns the barrier table and the analysis folder.
    """
    config = quickstart_config(epochs, device)
    folder = train_runs(config, out, progress=progress)
    analysis = Path(folder) / "analysis"
    a = load_state_dict(checkpoint_path(folder, "a", epochs))
    b = load_state_dict(checkpoint_path(folder, "b", epochs))
    settings = {
        "training": str(folder), "a": str(checkpoint_path(folder, "a", epochs)),
        "b": str(checkpoint_path(folder, "b", epochs)), "model": "cnn", "data": "fashion-mnist",
        "cumulative": ["shallow", "deep"], "max_examples": max_examples,
        "definitions": ["midpoint"], "references": ["models"], "device": device,
    }
    table = barriers(
        cnn(), a, b, fashion_mnist(), cumulative=("shallow", "deep"), max_examples=max_examples,
        device=device, out=analysis, progress=progress, config=settings,
    )
    return table, analysis
