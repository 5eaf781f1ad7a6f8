"""Fashion-MNIST from the standard idx files, without torchvision.

Searched, in order: ``$LAYERLMC_DATA`` (the folder itself or its ``fashion-mnist/``),
the user cache ``~/.cache/layerlmc/fashion-mnist`` (``$XDG_CACHE_HOME`` respected), and
Debian's ``dataset-fashion-mnist`` package at ``/usr/share/datasets/fashion-mnist``.

The idx helpers here (``read_idx``, ``find_idx_dir``, ``load_idx_split``) are shared with
MNIST, which uses the same four file names.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerLMCError
from ..registry import datasets
from .cache import cached_tensors

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: mean and standard deviation of the training pixels in [0, 1]
MEAN, STD = 0.2860, 0.3530
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def cache_root() -> Path:
    """``~/.cache/layerlmc``, or ``$XDG_CACHE_HOME/layerlmc`` where that is set."""
    # the XDG spec says an empty value means unset; without `or` it would be the current folder
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerlmc"


def idx_candidate_dirs(subdir: str, system_dir: Path) -> list[Path]:
    """``$LAYERLMC_DATA/<subdir>``, ``$LAYERLMC_DATA``, the user cache's ``<subdir>``, ``system_dir``."""
    dirs = []
    if os.environ.get("LAYERLMC_DATA"):
        root = Path(os.environ["LAYERLMC_DATA"])
        dirs += [root / subdir, root]
    dirs += [cache_root() / subdir, system_dir]
    return dirs


def candidate_dirs() -> list[Path]:
    return idx_candidate_dirs("fashion-mnist", DEBIAN_DIR)


def find_idx_dir(dirs: list[Path], title: str, how_to_get: str) -> Path:
    """The first of ``dirs`` holding all four idx files, else an error saying where it looked."""
    for folder in dirs:
        if all(_find_file(folder, name) for pair in FILES.values() for name in pair):
            return folder
    searched = ", ".join(str(d) for d in dirs)
    raise LayerLMCError(f"{title} not found (searched {searched}); {how_to_get}")


def find_dir() -> Path:
    return find_idx_dir(
        candidate_dirs(),
        "Fashion-MNIST",
        "install it with 'apt-get install -y dataset-fashion-mnist' "
        "or put the four idx files in $LAYERLMC_DATA/fashion-mnist",
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


def load_idx_split(
    folder: Path, split: str, title: str, mean: float, std: float, normalize: bool = True, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an MNIST-style idx folder: float32 ``[N, 1, 28, 28]`` images and int64 labels.

    The decoded tensors are cached (:mod:`layerlmc.data.cache`, keyed by the files' digest):
    later runs map them instead of decoding the files again."""
    images_name, labels_name = FILES[split]
    images_path = _find_file(folder, images_name) or folder / images_name
    labels_path = _find_file(folder, labels_name) or folder / labels_name
    if not (images_path.is_file() and labels_path.is_file()):
        return _decode_idx_split(images_path, labels_path, split, title, mean, std, normalize, classes)
    settings = {"title": title, "split": split, "mean": mean, "std": std, "normalize": normalize,
                "classes": classes}
    name = "".join(c if c.isalnum() else "-" for c in title.lower()) + f"-{split}"
    return cached_tensors(name, [images_path, labels_path], settings, lambda: _decode_idx_split(
        images_path, labels_path, split, title, mean, std, normalize, classes))


def _decode_idx_split(images_path: Path, labels_path: Path, split: str, title: str, mean: float,
                      std: float, normalize: bool, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images_np, labels_np = read_idx(images_path), read_idx(labels_path)
    # a valid idx file of the wrong kind (labels swapped for images, another image size)
    # would otherwise fail later with a shape error far from its cause
    if images_np.dtype != np.uint8 or images_np.ndim != 3 or images_np.shape[1:] != (28, 28):
        raise LayerLMCError(
            f"{images_path} holds {images_np.dtype} {list(images_np.shape)}, not uint8 [N, 28, 28] images"
        )
    if labels_np.ndim != 1:
        raise LayerLMCError(f"{labels_path} holds an array of shape {list(labels_np.shape)}, not a list of labels")
    images = torch.from_numpy(images_np.copy())
    labels = torch.from_numpy(labels_np.astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise LayerLMCError(f"{title} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise LayerLMCError(
            f"{labels_path} has labels from {int(labels.min())} to {int(labels.max())}; "
            f"{title} has classes 0..{classes - 1}"
        )
    x = images.float().div_(255.0).unsqueeze(1)
    # MNIST and Fashion-MNIST share file names; their pixel means (0.13, 0.29) tell them apart
    if x.shape[0] >= 10000 and abs(float(x.mean()) - mean) > 0.05:
        raise LayerLMCError(
            f"{images_path} does not look like {title}: its mean pixel is {float(x.mean()):.3f}, "
            f"{title}'s is {mean:.3f} (MNIST and Fashion-MNIST files have the same names; keep each "
            "in its own folder)"
        )
    if normalize:
        x = x.sub_(mean).div_(std)
    return x, labels


def load_split(split: str, folder: Path | None = None, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 ``[N, 1, 28, 28]`` (standardised unless ``normalize=False``) and int64 labels."""
    return load_idx_split(folder or find_dir(), split, "Fashion-MNIST", MEAN, STD, normalize)


@datasets.register("fashion-mnist", "Fashion-MNIST train (60k) / test (10k), 1×28×28, 10 classes "
                                    "(train_examples=N: a seeded subset of the train split)", aliases=("fmnist",))
def fashion_mnist(
    normalize: bool = True, train_examples: int | None = None, seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The two splits; with ``train_examples``, a seeded subset of the training images (in data
    order) for training at CPU scale; the test split stays whole."""
    folder = find_dir()
    data = {split: load_split(split, folder, normalize) for split in FILES}
    if train_examples is not None:
        images, labels = data["train"]
        if not 1 <= train_examples <= len(labels):
            raise LayerLMCError(f"train_examples must be between 1 and {len(labels)}, got {train_examples}")
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(labels), generator=generator)[:train_examples].sort().values
        data["train"] = (images[chosen], labels[chosen])
    return data
