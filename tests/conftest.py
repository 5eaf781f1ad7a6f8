"""Tiny CPU fixtures: a user's model file, data file and two checkpoints."""

from __future__ import annotations

import os
import gzip
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from layerlmc.core.checkpoints import save_state_dict
from layerlmc.data import fashion_mnist as fm

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=6, classes=3):
            super().__init__()
            self.fc1 = nn.Linear(4, width)
            self.norm = nn.BatchNorm1d(width)
            self.fc2 = nn.Linear(width, width)
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            x = torch.relu(self.norm(self.fc1(x)))
            x = torch.relu(self.fc2(x))
            return self.head(x)

    def make_net(width=6, classes=3):
        return Net(width, classes)
    """
)

DATA_FILE = textwrap.dedent(
    """
    import torch

    def make_splits(n_train=37, n_test=23, classes=3):
        g = torch.Generator().manual_seed(5)
        def split(n):
            x = torch.randn(n, 4, generator=g)
            y = torch.randint(0, classes, (n,), generator=g)
            return x, y
        return {"train": split(n_train), "test": split(n_test)}
    """
)


@pytest.fixture(autouse=True, scope="session")
def private_data_cache(tmp_path_factory):
    """Decoded datasets are cached in a folder of the test session, never the user's cache
    (subprocesses of the CLI inherit it through the environment)."""
    previous = os.environ.get("LAYERLMC_DATA_CACHE")
    os.environ["LAYERLMC_DATA_CACHE"] = str(tmp_path_factory.mktemp("decoded"))
    yield
    if previous is None:
        os.environ.pop("LAYERLMC_DATA_CACHE", None)
    else:
        os.environ["LAYERLMC_DATA_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny models: one thread is as fast, and on a busy machine several threads per
    process fight over the cores and make each small operation tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def user_files(tmp_path: Path) -> dict[str, Path]:
    """my_models.py, my_data.py and checkpoints A.pt (nested, DDP-prefixed) and B.safetensors."""
    (tmp_path / "my_models.py").write_text(MODEL_FILE)
    (tmp_path / "my_data.py").write_text(DATA_FILE)
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    torch.manual_seed(0)
    net_a = namespace["make_net"]()
    torch.manual_seed(1)
    net_b = namespace["make_net"]()
    # distinct BN statistics, so buffers are interpolated too
    for net, shift in ((net_a, 0.3), (net_b, -0.2)):
        net.norm.running_mean.fill_(shift)
        net.norm.running_var.fill_(1.0 + shift)
        net.norm.num_batches_tracked.fill_(7 if shift > 0 else 9)
    a_path = tmp_path / "A.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net_a.state_dict().items()}}, a_path)
    b_path = save_state_dict(net_b.state_dict(), tmp_path / "B.safetensors")
    return {
        "dir": tmp_path,
        "model": tmp_path / "my_models.py",
        "data": tmp_path / "my_data.py",
        "a": a_path,
        "b": b_path,
        "namespace": namespace,
        "state_a": net_a.state_dict(),
        "state_b": net_b.state_dict(),
    }


def _write_idx(path, array, gz=True):
    codes = {np.uint8: 0x08}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


def write_tiny_fmnist(root: Path) -> Path:
    """Tiny Fashion-MNIST idx files (240 train, 120 test) in ``root/fashion-mnist``, for
    ``LAYERLMC_DATA=root``."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 240), ("test", 120)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # class-dependent brightness, so a CNN can learn something in one epoch
        images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 18).astype(np.uint8)
        images_name, labels_name = fm.FILES[split]
        _write_idx(folder / f"{images_name}.gz", images, gz=True)
        _write_idx(folder / labels_name, labels, gz=False)
    return folder


@pytest.fixture()
def tiny_fmnist(tmp_path, monkeypatch):
    folder = write_tiny_fmnist(tmp_path / "data")
    monkeypatch.setenv("LAYERLMC_DATA", str(tmp_path / "data"))
    return folder
