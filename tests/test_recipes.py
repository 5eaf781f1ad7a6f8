"""`layerlmc reproduce` end to end on tiny data: the recipes' code paths, not their numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from layerlmc.cli.main import main
from layerlmc.recipes import pair, table1


@pytest.fixture()
def tiny_pair(tiny_fmnist, tmp_path, monkeypatch):
    """The fig1 config with a tiny CNN, one epoch."""
    config = pair.CONFIG.read_text().replace("name: deep-cnn", "name: deep-cnn\n  args: {width: 2, hidden: 8}")
    config = config.replace("epochs: 10", "epochs: 1").replace("warmup_iters: 200", "warmup_iters: 2")
    path = tmp_path / "pair.yaml"
    path.write_text(config)
    monkeypatch.setattr(pair, "CONFIG", path)
    return path


def test_fig1_and_robustness_share_one_training_run(tiny_pair, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["reproduce", "fig1", "--out", str(out), "--every", "1", "--max-examples", "40",
                 "--device", "cpu"]) == 0
    assert (out / "fig1" / "barriers.csv").is_file()
    history = (out / "pair_fmnist_cnn" / "history.jsonl").read_text()
    assert main(["reproduce", "robustness", "--out", str(out), "--every", "1", "--samples", "2",
                 "--max-examples", "40", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "random (mean ± std)" in printed and "higher" in printed
    # the second recipe trained nothing: the pair's history is unchanged
    assert (out / "pair_fmnist_cnn" / "history.jsonl").read_text() == history
    table = pd.read_csv(out / "robustness" / "robustness.csv")
    assert set(table["direction"]) == {"average", "random"} and set(table["step"]) == {0, 1}


def test_table1_on_tiny_data(tiny_fmnist, tmp_path, monkeypatch, capsys):
    config = table1.FEDERATED_CONFIG.read_text()
    config = config.replace("clients: 10", "clients: 5").replace("rounds: 10", "rounds: 1")
    config = config.replace("args: {width: 8, hidden: 64}", "args: {width: 2, hidden: 8}")
    config = config.replace("min_size: 50", "min_size: 5").replace("max_examples: 12000", "max_examples: null")
    path = tmp_path / "fed.yaml"
    path.write_text(config)
    monkeypatch.setattr(table1, "FEDERATED_CONFIG", path)
    monkeypatch.setattr(table1, "TABLE1_STRATEGIES", {
        "all layers (FedAvg)": [], "all but the head (FedPer)": ["aggregate.exclude=head"]})
    monkeypatch.setattr(table1, "TABLE1_PARTITIONS", {
        "dirichlet(1)": ["partition.scheme=dirichlet", "partition.alpha=1"],
        "shards(2 classes)": ["partition.scheme=shards", "partition.classes_per_client=2"]})
    out = tmp_path / "runs"
    assert main(["reproduce", "table1", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| averaged layers | dirichlet(1) | shards(2 classes) |" in printed
    table = pd.read_csv(out / "table1" / "table1.csv")
    assert len(table) == 4 and (table["round"] == 1).all()
    assert table["local_accuracy_mean"].between(0, 1).all()
    # other settings go to their own folder instead of being refused by the finished runs
    assert main(["reproduce", "table1", "--out", str(out), "--rounds", "2", "--device", "cpu"]) == 0
    assert (out / "table1_rounds2" / "table1.csv").is_file()


def test_align_recipe_on_tiny_data(tiny_fmnist, tmp_path, monkeypatch, capsys):
    from layerlmc.recipes import align

    tiny = {}
    for name, (config, groups) in align.PAIRS.items():
        text = config.read_text().replace("train_examples: 20000", "train_examples: 200")
        text = text.replace("hidden: [512, 512, 512]", "hidden: [16, 16]").replace("width: 8", "width: 2")
        text = text.replace("epochs: 8", "epochs: 1").replace("epochs: 5", "epochs: 1")
        path = tmp_path / config.name
        path.write_text(text)
        tiny[name] = (path, groups)
    monkeypatch.setattr(align, "PAIRS", tiny)
    out = tmp_path / "runs"
    assert main(["reproduce", "align", "--out", str(out), "--max-examples", "40", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| full | full |" in printed and "**resnet20-layernorm**" in printed
    table = pd.read_csv(out / "align" / "align.csv")
    assert set(table["model"]) == {"mlp", "resnet20-layernorm"}
    assert set(table["kind"]) == {"full", "group", "cumulative"}
    assert (table["removed"] - (table["before"] - table["after"])).abs().max() < 1e-12
    assert (out / "align" / "figures" / "align.png").is_file()
    assert (out / "align" / "mlp" / "weight" / "permutations.safetensors").is_file()
    assert table["activation"].notna().all()
