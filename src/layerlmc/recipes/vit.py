"""``layerlmc reproduce vit``: the paper's ViT study (PAPER.md §2.6) at a scale that fits two CPU
cores.

The paper interpolates SimpleViTs trained on CIFAR-10 one weight tensor (with its bias) at a
time, α from 0 to 1 in steps of 0.1, and compares each with a random direction of the same
norm. Here a pair of small ViTs is trained on a fixed subset of Fashion-MNIST from one
initialization with different data order (``configs/pair_fmnist_vit.yaml``: AdamW, warmup
into a cosine), and the final checkpoints go through :func:`layerlmc.analyses.robustness` with
``per_tensor=True`` on the same α grid, on a fixed subset of the test split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import robustness
from .pair import CONFIGS, train_pair

CONFIG = CONFIGS / "pair_fmnist_vit.yaml"
#: The paper's grid: α = 0, 0.1, …, 1 (``eval_interpolation_multiple_layers.py``).
ALPHAS = "0:1:11"


def reproduce_vit(
    out: str | Path = "runs/reproduce", epochs: int | None = None, samples: int = 3,
    max_examples: int = 1024, device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Train the ViT pair (once; a rerun resumes) and move each weight tensor of its final
    checkpoints, with its bias, along the averaging direction and along ``samples`` random
    directions of the same norm, from both models, at α = 0, 0.1, …, 1, on ``max_examples``
    test images (the paper: the first 1,024 train and 1,024 test images). Returns the
    ``robustness.csv`` table and the analysis folder ``out/vit``.
    """
    pair = train_pair(CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / "vit"
    table = robustness(
        pair.model, pair.a, pair.b, pair.data, analysis, samples=samples, alphas=ALPHAS, per_tensor=True, splits=["test"],
        max_examples=max_examples, device=device, progress=progress,
        config={"recipe": "vit", "training": str(pair.run), "samples": samples, "alphas": ALPHAS,
                "per_tensor": True, "max_examples": max_examples},
    )
    return table, analysis
