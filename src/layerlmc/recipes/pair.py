"""A recipe's training run: two networks of one config, trained (or resumed, or reused)
once and shared by every study that analyses them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analyses import find_checkpoints
from ..config import TrainConfig, load_config
from ..specs import build_data, build_model
from ..train import train_runs

#: the configs that ship with layerlmc (``layerlmc/configs``)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG = CONFIGS / "pair_fmnist_cnn.yaml"


@dataclass
class TrainedPair:
    """A recipe's training run: its folder, a fresh model, the data and both runs' checkpoints
    by epoch."""

    run: Path
    config: TrainConfig
    model: torch.nn.Module
    data: dict
    a: dict[int, Path]
    b: dict[int, Path]


def train_pair(
    config_file: str | Path, out: str | Path, *, epochs: int | None = None, device: str = "auto",
    progress: bool | None = None, overrides: Sequence[str] = (),
) -> TrainedPair:
    """Train (or resume, or reuse) the two runs of ``config_file`` into ``out/<name>``."""
    overrides = [f"device={device}", *([f"epochs={epochs}"] if epochs else []), *overrides]
    config: TrainConfig = load_config(TrainConfig, config_file, overrides)
    run = train_runs(config, Path(out) / config.name, progress=progress)
    return TrainedPair(
        run, config, build_model(config.model.name, config.model.args), build_data(config.data.name, config.data.args),
        find_checkpoints(run / "checkpoints" / "a"), find_checkpoints(run / "checkpoints" / "b"),
    )
