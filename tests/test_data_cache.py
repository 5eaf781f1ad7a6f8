"""The decoded-dataset cache (layerlmc.data.cache): a second load maps what the first decoded;
a changed, corrupt or truncated entry is decoded again, never trusted; it can be placed and
turned off."""

import numpy as np
import pytest
import torch

from layerlmc.data import fashion_mnist as fm


@pytest.fixture()
def cache(tmp_path, monkeypatch, tiny_fmnist):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LAYERLMC_DATA_CACHE", str(folder))
    return folder


def _decodes(monkeypatch) -> list:
    calls = []
    original = fm._decode_idx_split

    def counting(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(fm, "_decode_idx_split", counting)
    return calls


def test_second_load_maps_the_decoded_tensors(cache, monkeypatch):
    calls = _decodes(monkeypatch)
    first = fm.fashion_mnist()
    assert sorted(calls) == ["test", "train"]
    assert len(list(cache.glob("*.json"))) == 2
    again = fm.fashion_mnist()
    assert sorted(calls) == ["test", "train"]  # nothing decoded the second time
    for split in ("train", "test"):
        assert torch.equal(first[split][0], again[split][0])
        assert torch.equal(first[split][1], again[split][1])
        assert again[split][0].dtype == torch.float32 and again[split][1].dtype == torch.int64
    # copy-on-write: the tensors are writable and writing them never changes the cache
    again["train"][0].add_(1.0)
    third = fm.fashion_mnist()
    assert torch.equal(third["train"][0], first["train"][0])
    # other settings are other entries
    raw = fm.fashion_mnist(normalize=False)
    assert float(raw["train"][0].min()) >= 0.0 and len(list(cache.glob("*.json"))) == 4


def test_corrupt_truncated_or_stale_entries_are_rebuilt(cache, monkeypatch, tiny_fmnist):
    fm.fashion_mnist()
    calls = _decodes(monkeypatch)
    inputs = next(cache.glob("fashion-mnist-train-*.inputs.npy"))
    array = np.load(inputs)
    array.reshape(-1)[::7] += 0.5  # changed values, same size and header
    np.save(inputs, array)
    labels = next(cache.glob("fashion-mnist-test-*.labels.npy"))
    labels.write_bytes(labels.read_bytes()[:100])  # truncated
    data = fm.fashion_mnist()
    assert sorted(calls) == ["test", "train"]
    expected = fm._decode_idx_split(*_paths(tiny_fmnist, "train"), "train", "Fashion-MNIST",
                                    fm.MEAN, fm.STD, True, 10)
    assert torch.equal(data["train"][0], expected[0])
    calls.clear()
    fm.fashion_mnist()
    assert calls == []  # rewritten entries are valid again
    # a changed source file is a new key: decoded again, not the old entry
    images, labels = _paths(tiny_fmnist, "test")
    labels.write_bytes(labels.read_bytes()[:8] + bytes([3]) * (len(labels.read_bytes()) - 8))
    assert torch.all(fm.fashion_mnist()["test"][1] == 3) and calls == ["test"]


def _paths(folder, split):
    images, labels = fm.FILES[split]
    return fm._find_file(folder, images), fm._find_file(folder, labels)


def test_cache_can_be_turned_off_or_unwritable(tmp_path, monkeypatch, tiny_fmnist):
    monkeypatch.setenv("LAYERLMC_DATA_CACHE", "off")
    calls = _decodes(monkeypatch)
    fm.fashion_mnist()
    fm.fashion_mnist()
    assert len(calls) == 4
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("LAYERLMC_DATA_CACHE", str(blocked / "cache"))
    data = fm.fashion_mnist()  # decoded as before; the cache is skipped with a note
    assert data["train"][0].shape == (240, 1, 28, 28) and len(calls) == 6
