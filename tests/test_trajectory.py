"""Trajectory analysis over a training run and over checkpoint folders; resumable; plots from records."""

import json

import pandas as pd
import pytest
import torch

from layerlmc.analyses import find_checkpoints, layer_distances
from layerlmc.analyses.trajectory import select_steps
from layerlmc.cli.main import main
from layerlmc.config import TrainConfig, load_config
from layerlmc.core.groups import layer_groups
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate.plain import Evaluator
from layerlmc.train import train_runs

from .test_cli import _fails
from .test_train import TINY


@pytest.fixture()
def trained(tiny_fmnist, tmp_path):
    config = load_config(TrainConfig, None, [*TINY, "epochs=3"])
    return train_runs(config, tmp_path / "pair", progress=False)


def _records(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]


def test_trajectory_of_a_training_run(trained, capsys):
    assert main(["trajectory", str(trained), "--every", "2", "--cumulative", "deep", "--max-examples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "max layer" in printed
    analysis = trained / "analysis"
    table = pd.read_csv(analysis / "barriers.csv")
    assert sorted(table["step"].unique()) == [0, 2, 3]  # every 2nd, and the last
    assert set(table["kind"]) == {"full", "group", "cumulative"}
    # step 0: both runs are the shared initialization, so every barrier is exactly zero
    assert (table[table["step"] == 0]["value"].abs() < 1e-9).all()
    distances = pd.read_csv(analysis / "distances.csv")
    assert set(distances["group"]) == {"full", "conv1", "conv2", "conv3", "fc1", "head"}
    at_init = distances[distances["step"] == 0]
    assert (at_init[["l2_ab", "l2_a_init", "l2_b_init"]].abs() < 1e-12).all().all()
    assert (distances[distances["step"] == 3]["l2_ab"] > 0).all()
    figures = {p.name for p in (analysis / "figures").iterdir()}
    assert "layerwise_test_loss.png" in figures and "layerwise_test_loss.pdf" in figures
    assert any(name.startswith("cumulative_deep") for name in figures)
    assert "distances.png" in figures
    keys = [tuple(r[k] for k in ("step", "kind", "group", "base", "order", "alpha", "split")) for r in _records(analysis)]
    assert len(keys) == len(set(keys))


def test_killed_trajectory_ends_with_the_records_of_a_clean_run(trained, tmp_path, monkeypatch, capsys):
    clean = tmp_path / "clean"
    args = ["--every", "1", "--cumulative", "shallow", "--max-examples", "40", "--no-plots"]
    assert main(["trajectory", str(trained), "--out", str(clean), *args]) == 0
    calls = {"n": 0}
    original = Evaluator.evaluate

    def evaluate_then_die(self, *a):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return original(self, *a)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate_then_die)
    killed = tmp_path / "killed"
    assert main(["trajectory", str(trained), "--out", str(killed), *args]) == 130
    partial = _records(killed)
    assert 0 < len(partial) < len(_records(clean))
    monkeypatch.setattr(Evaluator, "evaluate", original)
    assert main(["trajectory", str(trained), "--out", str(killed), *args]) == 0

    def as_set(records):
        return sorted(json.dumps(r, sort_keys=True) for r in records)

    assert as_set(_records(killed)) == as_set(_records(clean))
    assert len(_records(killed)) == len(set(as_set(_records(killed))))
    pd.testing.assert_frame_equal(pd.read_csv(clean / "barriers.csv").sort_values(list(pd.read_csv(clean / "barriers.csv").columns[:-1])).reset_index(drop=True),
                                  pd.read_csv(killed / "barriers.csv").sort_values(list(pd.read_csv(clean / "barriers.csv").columns[:-1])).reset_index(drop=True))


def test_plot_needs_only_the_records(trained, tmp_path, capsys, monkeypatch):
    assert main(["trajectory", str(trained), "--max-examples", "30", "--no-plots"]) == 0
    # no model can be built now: plotting must not try
    monkeypatch.setattr("layerlmc.specs.build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert not (trained / "analysis" / "figures" / "layerwise_train_loss.png").exists()
    capsys.readouterr()
    assert main(["plot", str(trained)]) == 0
    assert "layerwise_train_loss.png" in capsys.readouterr().out
    _fails(capsys, ["plot", str(tmp_path / "nothing")], "no records")


def test_checkpoint_folders_and_globs(trained, tmp_path, capsys):
    a_dir, b_dir = trained / "checkpoints" / "a", trained / "checkpoints" / "b"
    assert list(find_checkpoints(a_dir)) == [0, 1, 2, 3]  # optimizer_*.pt are not checkpoints
    assert list(find_checkpoints(str(b_dir / "epoch_000[12].safetensors"))) == [1, 2]
    out = tmp_path / "folders"
    common = ["--model", "cnn", "--model-arg", "width=4", "--model-arg", "hidden=8", "--data", "fashion-mnist",
              "--max-examples", "30", "--no-plots"]
    assert main(["trajectory", str(a_dir / "epoch_000[123].safetensors"), "--b", str(b_dir), "--out", str(out),
                 *common]) != 0
    err = capsys.readouterr().err
    assert "steps 0 have no checkpoint a" in err and "--allow-missing" in err
    assert main(["trajectory", str(a_dir / "epoch_000[123].safetensors"), "--b", str(b_dir), "--out", str(out),
                 "--allow-missing", *common]) == 0
    assert sorted(pd.read_csv(out / "barriers.csv")["step"].unique()) == [1, 2, 3]
    _fails(capsys, ["trajectory", str(a_dir), "--out", str(out), *common], "give b's checkpoints with --b")
    _fails(capsys, ["trajectory", str(trained), "--pair", "a,c"], "has no run 'c'", "runs: a, b")
    _fails(capsys, ["trajectory", str(trained), "--steps", "1,7"], "no checkpoint pair for step(s) 7")


def test_step_selection_and_distances():
    a = {0: "x", 5: "x", 10: "x", 15: "x"}
    assert select_steps(a, a, every=2) == [0, 10, 15]
    assert select_steps(a, a, steps=[10, 5]) == [5, 10]
    with pytest.raises(LayerLMCError, match="steps 15 have no checkpoint b"):
        select_steps(a, {0: "x", 5: "x", 10: "x"})
    torch.manual_seed(0)
    s = {"l.weight": torch.randn(3, 2), "l.bias": torch.randn(3)}
    t = {k: 2 * v for k, v in s.items()}
    rows = layer_distances(s, t, s, s, layer_groups(s))
    full = rows[0]
    flat = torch.cat([s["l.weight"].reshape(-1), s["l.bias"]]).double()
    assert full["group"] == "full" and full["cos_ab"] == pytest.approx(1.0)
    assert full["l2_ab"] == pytest.approx(float(flat.norm()))
    assert full["l2_a_init"] == 0.0 and full["l2_b_init"] == pytest.approx(float(flat.norm()))


def test_changed_inputs_are_refused_and_plot_is_read_only(trained, tmp_path, capsys):
    import shutil

    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    shutil.copytree(trained / "checkpoints" / "a", a_dir)
    shutil.copytree(trained / "checkpoints" / "b", b_dir)
    out = tmp_path / "t"
    common = ["--b", str(b_dir), "--model", "cnn", "--model-arg", "width=4", "--model-arg", "hidden=8",
              "--data", "fashion-mnist", "--max-examples", "30", "--no-plots", "--out", str(out)]
    assert main(["trajectory", str(a_dir), *common]) == 0
    capsys.readouterr()
    _fails(capsys, ["trajectory", str(a_dir), *common, "--data-arg", "normalize=false"], "another data")
    shutil.copy(a_dir / "epoch_0003.safetensors", b_dir / "epoch_0003.safetensors")
    _fails(capsys, ["trajectory", str(a_dir), *common], "checkpoints of epoch 3 changed")
    points = out / "points.jsonl"
    points.write_text(points.read_text() + '{"torn": ')
    before = points.read_text()
    assert main(["plot", str(out)]) == 0
    assert points.read_text() == before
