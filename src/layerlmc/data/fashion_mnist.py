"""Fashion-MNIST from the standard idx files, without torchvision.

Searched, in order: ``$LAYERLMC_DATA`` (the folder itself or its ``fashion-mnist/``),
the user cache ``~/.cache/layerlmc/fashion-mnist`` (``$XDG_CACHE_HOME`` respected), and
Debian's ``dataset-fashion-mnist`` package at ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerLMCError
from ..registry import datasets

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: mean and standard deviation of the training pixels in [0, 1]
MEAN, STD = 0.2860, 0.3530
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LAYERLMC_DATA"):
        root = Path(os.environ["LAYERLMC_DATA"])
        dirs += [root / "fashion-mnist", root]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    dirs += [cache / "layerlmc" / "fashion-mnist", DEBIAN_DIR]
    return dirs


def find_dir() -> Path:
    for folder in candidate_dirs():
        if all(_find_file(folder, name) for pair in FILES.values() for name in pair):
            return folder
    searched = ", ".join(str(d) for d in candidate_dirs())
    raise LayerLMCError(
        f"Fashion-MNIST not found (searched {searched}); install it with "
        "'apt-get install -y dataset-fashion-mnist' or put the four idx files in $LAYERLMC_DATA/fashion-mnist"
    )


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array of its stored dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise LayerLMCError(f"cannot read {path}: {err}") from None
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise LayerLMCError(f"{path} is not an idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise LayerLMCError(f"{path} is truncated or corrupt ({len(raw) - offset} bytes of data, expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def load_split(split: str, folder: Path | None = None, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 ``[N, 1, 28, 28]`` (standardised unless ``normalize=False``) and int64 labels."""
    folder = folder or find_dir()
    images_name, labels_name = FILES[split]
    images = torch.from_numpy(read_idx(_find_file(folder, images_name) or folder / images_name).copy())
    labels = torch.from_numpy(read_idx(_find_file(folder, labels_name) or folder / labels_name).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise LayerLMCError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = images.float().div_(255.0).unsqueeze(1)
    if normalize:
        x = x.sub_(MEAN).div_(STD)
    return x, labels


@datasets.register("fashion-mnist", "Fashion-MNIST train (60k) / test (10k), 1×28×28, 10 classes")
def fashion_mnist(normalize: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    folder = find_dir()
    return {split: load_split(split, folder, normalize) for split in FILES}
