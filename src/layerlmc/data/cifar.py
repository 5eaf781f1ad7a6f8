"""CIFAR-10 and CIFAR-100 from the official archives, unpacked, in the binary or the python version.

Searched, in order: the ``root`` argument alone where given (``--data-arg root=FOLDER``), else
``$LAYERLMC_DATA``, the user cache ``~/.cache/layerlmc`` (``$XDG_CACHE_HOME`` respected) and
``/usr/share/datasets``; in each, the archive's own folder (``cifar-10-batches-bin``,
``cifar-10-batches-py``, ``cifar-100-binary``, ``cifar-100-python``) or the folder itself
holding the files. Nothing is downloaded.

The python version is a set of pickles. They are read by an unpickler that admits numpy's
array reconstruction and nothing else, so a file that only claims to be CIFAR cannot run code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerLMCError
from ..registry import datasets
from .fashion_mnist import cache_root

SYSTEM_ROOT = Path("/usr/share/datasets")
WEBSITE = "https://www.cs.toronto.edu/~kriz/cifar.html"
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Variant:
    title: str
    classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bin_dir: str
    bin_files: dict[str, tuple[str, ...]]
    #: label bytes before the pixels of each binary record; the label used is the last of them
    label_bytes: int
    py_dir: str
    py_files: dict[str, tuple[str, ...]]
    label_key: bytes


CIFAR10 = Variant(
    "CIFAR-10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
    "cifar-10-batches-bin",
    {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    1,
    "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    b"labels",
)
CIFAR100 = Variant(
    "CIFAR-100", 100, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276),
    "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
    2,  # coarse label, then the fine label
    "cifar-100-python", {"train": ("train",), "test": ("test",)},
    b"fine_labels",
)


def search_roots(root: str | os.PathLike | None = None) -> list[Path]:
    if root is not None:
        # a folder the user names is the only place they mean; falling back would hide a typo
        return [Path(str(root)).expanduser()]
    roots = [Path(os.environ["LAYERLMC_DATA"])] if os.environ.get("LAYERLMC_DATA") else []
    return roots + [cache_root(), SYSTEM_ROOT]


def find_folder(variant: Variant, root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The first folder holding all files of one version, and which: ``"binary"`` or ``"python"``."""
    roots = search_roots(root)
    versions = {"binary": variant.bin_files, "python": variant.py_files}
    incomplete = []
    for base in roots:
        places = [
            (base / variant.bin_dir, "binary"), (base / variant.py_dir, "python"),
            (base, "binary"), (base, "python"),
        ]
        for folder, version in places:
            names = [name for files in versions[version].values() for name in files]
            missing = [name for name in names if not (folder / name).is_file()]
            if not missing:
                return folder, version
            # said only when nothing complete is found, so that a half-unpacked archive is not
            # reported as absent
            if len(missing) < len(names) or (folder != base and folder.is_dir()):
                incomplete.append(f"{folder} lacks {', '.join(missing)}")
    where = ", ".join(str(r) for r in roots)
    looked = f"{variant.bin_dir}/, {variant.py_dir}/ or the files themselves"
    note = f"; {'; '.join(incomplete)}" if incomplete else ""
    if root is not None:
        gone = "" if roots[0].is_dir() else ", no such folder"
        raise LayerLMCError(
            f"{variant.title} not found in root={where} (looked for {looked}{gone}{note}); download the binary or "
            f"python version from {WEBSITE} on a machine with network access and unpack it there"
        )
    raise LayerLMCError(
        f"{variant.title} not found (searched {where}, each for {looked}{note}); download the binary or python "
        f"version from {WEBSITE} on a machine with network access and unpack it into $LAYERLMC_DATA or "
        "~/.cache/layerlmc, or pass --data-arg root=FOLDER"
    )


def read_binary(path: Path, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch as uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    record = variant.label_bytes + PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise LayerLMCError(f"cannot read {path}: {err}") from None
    if raw.size == 0 or raw.size % record:
        raise LayerLMCError(
            f"{path} is corrupt or not a {variant.title} binary batch: {raw.size} bytes is not a whole number "
            f"of {record}-byte records"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, variant.label_bytes - 1].astype(np.int64)
    return rows[:, variant.label_bytes :].reshape(-1, 3, 32, 32), _checked_labels(labels, path, variant)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs; refuses every other one."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            shown = ascii(f"{module}.{name}"[:120])
            raise LayerLMCError(
                f"{self.path} refers to {shown}, which is refused: a CIFAR pickle holds only numpy arrays, "
                "so this file is not one"
            ) from None


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # the official files name numpy.core (numpy 1); files saved again under numpy 2 name numpy._core.
    # Both map to the objects themselves, so numpy.core (deprecated in numpy 2) is never imported.
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        # numpy integer labels, in files saved again by numpy
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


def read_python(path: Path, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    try:
        with open(path, "rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, path).load()
    except LayerLMCError:
        raise
    except OSError as err:
        raise LayerLMCError(f"cannot read {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any malformed pickle is the data's fault, said in one line
        text = str(err).strip().splitlines()
        raise LayerLMCError(
            f"{path} is not a readable {variant.title} pickle: {type(err).__name__}: {text[0] if text else ''}"
        ) from None
    if not isinstance(batch, dict):
        raise LayerLMCError(
            f"{path} holds a {type(batch).__name__}, not the dict of a {variant.title} python batch"
        )
    found = {}
    for key in (b"data", variant.label_key):
        # pickles written by Python 3 code have str keys; the official Python 2 ones have bytes
        value = batch.get(key, batch.get(key.decode()))
        if value is None:
            raise LayerLMCError(
                f"{path} has no {key.decode()!r} entry, so it is not a {variant.title} python batch"
            )
        found[key] = value
    data = found[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shown = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise LayerLMCError(f"{path}: 'data' is {shown}, not uint8 [N, {PIXELS}] images")
    try:
        labels = np.asarray(found[variant.label_key])
    except (TypeError, ValueError):
        labels = np.asarray(None)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise LayerLMCError(f"{path}: {variant.label_key.decode()!r} is not a list of integer labels")
    if len(labels) != len(data) or not len(data):
        raise LayerLMCError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), _checked_labels(labels.astype(np.int64), path, variant)


def _checked_labels(labels: np.ndarray, path: Path, variant: Variant) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= variant.classes):
        raise LayerLMCError(
            f"{path} has labels from {labels.min()} to {labels.max()}; {variant.title} has classes "
            f"0..{variant.classes - 1}"
        )
    return labels


def load(variant: Variant, root: str | os.PathLike | None = None, normalize: bool = True):
    """``{"train": (x, y), "test": (x, y)}``: float32 ``[N, 3, 32, 32]`` images and int64 labels."""
    folder, version = find_folder(variant, root)
    files, read = (variant.bin_files, read_binary) if version == "binary" else (variant.py_files, read_python)
    out = {}
    for split, names in files.items():
        parts = [read(folder / name, variant) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        x = torch.from_numpy(images).float().div_(255.0)
        if normalize:
            x = x.sub_(torch.tensor(variant.mean).view(1, 3, 1, 1)).div_(torch.tensor(variant.std).view(1, 3, 1, 1))
        out[split] = (x, torch.from_numpy(labels))
    return out


@datasets.register("cifar10", "CIFAR-10 train (50k) / test (10k), 3×32×32, 10 classes (binary or python version)")
def cifar10(root: str | None = None, normalize: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return load(CIFAR10, root, normalize)


@datasets.register(
    "cifar100", "CIFAR-100 train (50k) / test (10k), 3×32×32, 100 fine classes (binary or python version)"
)
def cifar100(root: str | None = None, normalize: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return load(CIFAR100, root, normalize)
