"""MNIST from the standard idx files (the same four names as Fashion-MNIST), without torchvision.

Searched, in order: ``$LAYERLMC_DATA/mnist``, ``$LAYERLMC_DATA``, the user cache
``~/.cache/layerlmc/mnist`` (``$XDG_CACHE_HOME`` respected) and ``/usr/share/datasets/mnist``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..registry import datasets
from .fashion_mnist import FILES, find_idx_dir, idx_candidate_dirs, load_idx_split

#: mean and standard deviation of the training pixels in [0, 1]
MEAN, STD = 0.1307, 0.3081
SYSTEM_DIR = Path("/usr/share/datasets/mnist")


def candidate_dirs() -> list[Path]:
    return idx_candidate_dirs("mnist", SYSTEM_DIR)


def find_dir() -> Path:
    return find_idx_dir(
        candidate_dirs(),
        "MNIST",
        "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from the MNIST website on a machine with network access "
        "and put them in $LAYERLMC_DATA/mnist or ~/.cache/layerlmc/mnist",
    )


def load_split(split: str, folder: Path | None = None, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 ``[N, 1, 28, 28]`` (standardised unless ``normalize=False``) and int64 labels."""
    return load_idx_split(folder or find_dir(), split, "MNIST", MEAN, STD, normalize)


@datasets.register("mnist", "MNIST digits train (60k) / test (10k), 1×28×28, 10 classes")
def mnist(normalize: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    folder = find_dir()
    return {split: load_split(split, folder, normalize) for split in FILES}
