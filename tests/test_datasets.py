"""MNIST and CIFAR-10/100 readers on tiny synthetic files in each official format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from layerlmc.data import cifar, mnist
from layerlmc.data import fashion_mnist as fm
from layerlmc.errors import LayerLMCError
from layerlmc.registry import datasets
from layerlmc.specs import build_data


@pytest.fixture(autouse=True)
def no_real_data(tmp_path, monkeypatch):
    """Every place the readers look is inside tmp_path, so data on this machine is never found."""
    monkeypatch.delenv("LAYERLMC_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "SYSTEM_DIR", tmp_path / "system" / "mnist")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "system" / "fashion-mnist")
    monkeypatch.setattr(cifar, "SYSTEM_ROOT", tmp_path / "system")


def test_all_are_registered():
    for name in ("mnist", "cifar10", "cifar100", "fashion-mnist"):
        assert name in datasets


# ---------------------------------------------------------------- MNIST


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _write_mnist(folder, n=(7, 5), labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for (split, (images_name, labels_name)), count in zip(fm.FILES.items(), n):
        images = rng.integers(0, 256, (count, 28, 28))
        images[0, 0, 0] = 255
        _write_idx(folder / f"{images_name}.gz", images, gz=True)
        _write_idx(folder / labels_name, rng.integers(0, 10, count) if labels is None else labels, gz=False)
    return folder


def test_mnist_shapes_and_normalisation(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("LAYERLMC_DATA", str(tmp_path / "data"))
    data = mnist.mnist()
    x, y = data["train"]
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (7,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    assert data["test"][0].shape == (5, 1, 28, 28)
    assert float(x[0, 0, 0, 0]) == pytest.approx((1.0 - 0.1307) / 0.3081)
    raw = mnist.mnist(normalize=False)["train"][0]
    assert float(raw[0, 0, 0, 0]) == 1.0


def test_mnist_search_order_cache_then_system(tmp_path, monkeypatch):
    cached = _write_mnist(tmp_path / "cache" / "layerlmc" / "mnist")
    _write_mnist(mnist.SYSTEM_DIR)
    assert mnist.find_dir() == cached
    # $LAYERLMC_DATA itself, without the mnist/ subfolder
    flat = _write_mnist(tmp_path / "flat")
    monkeypatch.setenv("LAYERLMC_DATA", str(flat))
    assert mnist.find_dir() == flat


def test_mnist_bad_folder(tmp_path):
    folder = _write_mnist(tmp_path / "m", labels=np.array([0, 1, 2, 3, 4, 5, 10]))
    with pytest.raises(LayerLMCError, match="labels from 0 to 10; MNIST has classes 0..9"):
        mnist.load_split("train", folder)
    # images where labels belong
    name = fm.FILES["test"][1]
    (folder / name).unlink()
    _write_idx(folder / f"{name}.gz", np.zeros((5, 28, 28)), gz=True)
    with pytest.raises(LayerLMCError, match="not a list of labels"):
        mnist.load_split("test", folder)


def test_mnist_absent_says_how_to_get_it():
    with pytest.raises(LayerLMCError, match=r"MNIST not found \(searched .*\); download .* MNIST website") as err:
        mnist.mnist()
    assert "\n" not in str(err.value) and "/system/mnist" in str(err.value)


# ---------------------------------------------------------------- CIFAR


def _records(n, classes, seed, coarse=False):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    pixels[0, 0] = 255  # red channel, top-left pixel of the first image
    pixels[0, 1024] = 0  # green channel, same pixel
    labels = rng.integers(0, classes, n, dtype=np.uint8)
    labels[0] = classes - 1
    return pixels, labels


def _write_binary(folder, variant, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in variant.bin_files.items():
        for i, name in enumerate(names):
            pixels, labels = _records(n, variant.classes, seed=i + (10 if split == "test" else 0))
            head = labels[:, None] if variant.label_bytes == 1 else np.stack([labels % 20, labels], axis=1)
            (folder / name).write_bytes(np.concatenate([head, pixels], axis=1).astype(np.uint8).tobytes())
    return folder


def _write_python(folder, variant, n=3, numpy1_names=False):
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in variant.py_files.items():
        for i, name in enumerate(names):
            pixels, labels = _records(n, variant.classes, seed=i + (10 if split == "test" else 0))
            batch = {b"batch_label": b"synthetic", b"data": pixels, variant.label_key: [int(v) for v in labels]}
            if variant is cifar.CIFAR100:
                batch[b"coarse_labels"] = [int(v) % 20 for v in labels]
            # protocol 3 names globals as text lines, so they can be made to read like the official files
            raw = pickle.dumps(batch, protocol=3)
            if numpy1_names:
                raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            (folder / name).write_bytes(raw)
    return folder


FORMATS = [
    (cifar.CIFAR10, "binary", cifar.cifar10),
    (cifar.CIFAR10, "python", cifar.cifar10),
    (cifar.CIFAR100, "binary", cifar.cifar100),
    (cifar.CIFAR100, "python", cifar.cifar100),
]


@pytest.mark.parametrize(("variant", "version", "reader"), FORMATS, ids=[f"{v.title}-{f}" for v, f, _ in FORMATS])
def test_cifar_shapes_labels_and_normalisation(tmp_path, variant, version, reader):
    if version == "binary":
        _write_binary(tmp_path / "data" / variant.bin_dir, variant)
    else:
        _write_python(tmp_path / "data" / variant.py_dir, variant, numpy1_names=variant is cifar.CIFAR10)
    assert cifar.find_folder(variant, tmp_path / "data")[1] == version
    data = reader(root=str(tmp_path / "data"))
    x, y = data["train"]
    n_train = 3 * len(variant.bin_files["train"])
    assert x.shape == (n_train, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (n_train,) and y.dtype == torch.int64
    assert int(y[0]) == variant.classes - 1 and int(y.min()) >= 0  # the fine label, for CIFAR-100
    assert data["test"][0].shape == (3, 3, 32, 32)
    assert float(x[0, 0, 0, 0]) == pytest.approx((1.0 - variant.mean[0]) / variant.std[0], abs=1e-6)
    assert float(x[0, 1, 0, 0]) == pytest.approx((0.0 - variant.mean[1]) / variant.std[1], abs=1e-6)
    raw = reader(root=str(tmp_path / "data"), normalize=False)["train"][0]
    assert float(raw[0, 0, 0, 0]) == 1.0 and float(raw.min()) >= 0.0


def test_cifar_the_folder_itself_and_search_order(tmp_path, monkeypatch):
    own = _write_binary(tmp_path / "mine", cifar.CIFAR10)
    assert cifar.find_folder(cifar.CIFAR10, own) == (own, "binary")
    cached = _write_python(tmp_path / "cache" / "layerlmc" / "cifar-10-batches-py", cifar.CIFAR10)
    _write_binary(tmp_path / "system" / "cifar-10-batches-bin", cifar.CIFAR10)
    assert cifar.find_folder(cifar.CIFAR10) == (cached, "python")
    monkeypatch.setenv("LAYERLMC_DATA", str(tmp_path / "mine"))
    assert cifar.find_folder(cifar.CIFAR10) == (own, "binary")
    # through the CLI's path: --data cifar10 --data-arg root=FOLDER
    data = build_data("cifar10", {"root": str(tmp_path / "cache" / "layerlmc")})
    assert data["test"][0].shape == (3, 3, 32, 32)


def test_cifar_absent_says_where_and_how(tmp_path):
    with pytest.raises(LayerLMCError) as err:
        cifar.cifar100()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("CIFAR-100 not found (searched ")
    assert str(tmp_path / "cache" / "layerlmc") in message and str(tmp_path / "system") in message
    assert "cifar-100-binary/" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    with pytest.raises(LayerLMCError, match=r"CIFAR-10 not found in root=.*nowhere.*no such folder"):
        cifar.cifar10(root=str(tmp_path / "nowhere"))


def test_cifar_half_unpacked_folder_is_named(tmp_path):
    folder = _write_binary(tmp_path / "cifar-10-batches-bin", cifar.CIFAR10)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(LayerLMCError, match=r"cifar-10-batches-bin lacks data_batch_3\.bin"):
        cifar.cifar10(root=str(tmp_path))


def test_cifar_binary_bad_folders(tmp_path):
    folder = _write_binary(tmp_path / "c10", cifar.CIFAR10)
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(LayerLMCError, match=r"data_batch_2\.bin is corrupt .* 3073-byte records"):
        cifar.cifar10(root=str(folder))
    # CIFAR-10 records read as CIFAR-100 ones do not fit either
    c100 = tmp_path / "c100"
    c100.mkdir()
    for name in ("train.bin", "test.bin"):
        (c100 / name).write_bytes((folder / "test_batch.bin").read_bytes())
    with pytest.raises(LayerLMCError, match="train.bin is corrupt .* 3074-byte records"):
        cifar.cifar100(root=str(c100))
    (folder / "data_batch_2.bin").write_bytes(b"")
    with pytest.raises(LayerLMCError, match="data_batch_2.bin is corrupt"):
        cifar.cifar10(root=str(folder))
    folder = _write_binary(tmp_path / "labels", cifar.CIFAR10)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[3073] = 10  # the second record's label
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    expected = r"test_batch\.bin has labels from \d+ to 10; CIFAR-10 has classes 0..9"
    with pytest.raises(LayerLMCError, match=expected):
        cifar.cifar10(root=str(folder))


def _repickle(path, change):
    with open(path, "rb") as handle:
        batch = pickle.load(handle)
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=3))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop(b"fine_labels"), "has no 'fine_labels' entry"),
        (lambda b: b.pop(b"data"), "has no 'data' entry"),
        (lambda b: b.__setitem__(b"fine_labels", [0, 1, 100]), "from 0 to 100; CIFAR-100 has classes 0..99"),
        (lambda b: b.__setitem__(b"fine_labels", [0, 1]), "3 images but 2 labels"),
        (lambda b: b.__setitem__(b"fine_labels", ["a", "b", "c"]), "not a list of integer labels"),
        (lambda b: b.__setitem__(b"data", b[b"data"][:, :100]), r"'data' is uint8 \[3, 100\], not uint8"),
        (lambda b: b.__setitem__(b"data", b[b"data"].astype(np.float32)), "'data' is float32"),
    ],
    ids=["no-labels", "no-data", "label-range", "count", "label-type", "image-size", "image-dtype"],
)
def test_cifar_python_bad_folders(tmp_path, change, message):
    folder = _write_python(tmp_path / "cifar-100-python", cifar.CIFAR100)
    _repickle(folder / "test", change)
    with pytest.raises(LayerLMCError, match=message) as err:
        cifar.cifar100(root=str(tmp_path))
    assert str(folder / "test") in str(err.value)


def test_cifar_python_not_a_pickle_or_not_a_dict(tmp_path):
    folder = _write_python(tmp_path / "cifar-10-batches-py", cifar.CIFAR10)
    (folder / "test_batch").write_bytes(b"this is no pickle")
    with pytest.raises(LayerLMCError, match="test_batch is not a readable CIFAR-10 pickle"):
        cifar.cifar10(root=str(tmp_path))
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=3))
    with pytest.raises(LayerLMCError, match="holds a list, not the dict"):
        cifar.cifar10(root=str(tmp_path))


def test_cifar_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    folder = _write_python(tmp_path / "cifar-10-batches-py", cifar.CIFAR10)
    marker = tmp_path / "pwned"
    # what pickle.dumps writes for an object whose __reduce__ is (os.system, (command,))
    (folder / "data_batch_4").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(LayerLMCError, match=r"data_batch_4 refers to 'os\.system', which is refused") as err:
        cifar.cifar10(root=str(tmp_path))
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the same hidden inside an otherwise valid batch, and through builtins
    payload = b"\x80\x03}q\x00(C\x04dataq\x01cbuiltins\neval\nq\x02X\x06\x00\x00\x00print()q\x03\x85q\x04Rq\x05u."
    (folder / "data_batch_4").write_bytes(payload)
    with pytest.raises(LayerLMCError, match=r"'builtins\.eval', which is refused"):
        cifar.cifar10(root=str(tmp_path))
