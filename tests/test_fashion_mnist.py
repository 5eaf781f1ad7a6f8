"""The idx reader and the quickstart, on a tiny synthetic Fashion-MNIST in $LAYERLMC_DATA."""

import json

import pytest
import torch

from layerlmc.cli.main import main
from layerlmc.data import fashion_mnist as fm
from layerlmc.errors import LayerLMCError


def test_reader_gives_standardised_tensors(tiny_fmnist):
    data = fm.fashion_mnist()
    x, y = data["train"]
    assert x.shape == (240, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.max()) <= 9
    raw, _ = fm.load_split("test", tiny_fmnist, normalize=False)
    assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0


def test_truncated_and_missing_files_are_named(tiny_fmnist, tmp_path, monkeypatch):
    path = tiny_fmnist / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(LayerLMCError, match="truncated or corrupt"):
        fm.load_split("test", tiny_fmnist)
    monkeypatch.setenv("LAYERLMC_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "none")
    with pytest.raises(LayerLMCError, match="Fashion-MNIST not found.*apt-get install -y dataset-fashion-mnist"):
        fm.fashion_mnist()


def test_quickstart_end_to_end(tiny_fmnist, tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--epochs", "1", "--max-examples", "100"]) == 0
    printed = capsys.readouterr().out
    for row in ("full", "conv1", "head", "shallow +conv2", "deep +fc1"):
        assert row in printed
    # it ends with the path of its report page: the training curves and the barriers together
    assert printed.strip().splitlines()[-1].startswith(f"report:   {out / 'report.html'}")
    page = (out / "report.html").read_text()
    assert "training: loss of each model" in page and "single-group barriers" in page
    assert (out / "checkpoints" / "a" / "epoch_0000.safetensors").is_file()
    assert (out / "checkpoints" / "b" / "epoch_0001.safetensors").is_file()
    init_a = fm_state(out / "checkpoints" / "a" / "epoch_0000.safetensors")
    init_b = fm_state(out / "checkpoints" / "b" / "epoch_0000.safetensors")
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)  # one shared initialization
    records = [json.loads(line) for line in (out / "analysis" / "points.jsonl").read_text().splitlines()]
    assert {r["n"] for r in records} == {100}
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert json.loads((out / "analysis" / "run.json").read_text())["status"] == "complete"
    # a second run trains nothing and evaluates nothing
    lines = (out / "analysis" / "points.jsonl").read_text()
    history = (out / "history.jsonl").read_text()
    assert main(["quickstart", "--out", str(out), "--epochs", "1", "--max-examples", "100"]) == 0
    assert (out / "analysis" / "points.jsonl").read_text() == lines
    assert (out / "history.jsonl").read_text() == history


def fm_state(path):
    from layerlmc.core.checkpoints import load_state_dict

    return load_state_dict(path)
