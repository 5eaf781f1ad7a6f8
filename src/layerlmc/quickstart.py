"""The main job: two small CNNs on Fashion-MNIST from one initialization, then their barriers."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pandas as pd
import torch

from .checkpoints import load_state_dict, save_state_dict
from .data.fashion_mnist import fashion_mnist
from .lmc import barriers
from .models import cnn
from .train import train_epochs

log = logging.getLogger("layerlmc")

#: Both runs start from the initialization drawn with INIT_SEED and differ only in data order.
INIT_SEED = 0
ORDER_SEEDS = {"a": 1, "b": 2}


def checkpoint_path(out: Path, role: str, epoch: int) -> Path:
    return out / "checkpoints" / role / f"epoch_{epoch:04d}.safetensors"


def run_quickstart(
    out: str | Path = "runs/quickstart",
    epochs: int = 2,
    lr: float = 0.05,
    batch_size: int = 64,
    max_examples: int | None = 10000,
    device: str = "auto",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train (or reuse) the pair, then full, layer-wise and shallow/deep cumulative barriers.

    Training is skipped for a run whose final checkpoint exists, and the barrier step resumes
    from ``points.jsonl``, so rerunning finishes an interrupted quickstart.
    """
    out = Path(out)
    data = fashion_mnist()
    torch.manual_seed(INIT_SEED)
    init = cnn()
    finals = {}
    for role, seed in ORDER_SEEDS.items():
        final = checkpoint_path(out, role, epochs)
        if not final.exists():
            save_state_dict(init.state_dict(), checkpoint_path(out, role, 0))
            model = copy.deepcopy(init)
            log.info("training run %s (data order seed %d, %d epochs)", role, seed, epochs)
            train_epochs(
                model, *data["train"], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                desc=f"run {role}",
                on_epoch_end=lambda epoch, m, role=role: save_state_dict(
                    m.state_dict(), checkpoint_path(out, role, epoch)
                ),
            )
        finals[role] = load_state_dict(final)
    config = {
        "a": str(checkpoint_path(out, "a", epochs)), "b": str(checkpoint_path(out, "b", epochs)),
        "model": "cnn", "data": "fashion-mnist", "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "init_seed": INIT_SEED, "order_seeds": ORDER_SEEDS, "cumulative": ["shallow", "deep"],
        "max_examples": max_examples, "definitions": ["midpoint"], "references": ["models"],
        "device": device,
    }
    return barriers(
        cnn(), finals["a"], finals["b"], data, cumulative=("shallow", "deep"),
        max_examples=max_examples, device=device, out=out, progress=progress, config=config,
    )
