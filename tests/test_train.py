"""Training runs: configs, schedules, augmentation, checkpoints every epoch, exact resume."""

import json

import pytest
import torch
import yaml

from layerlmc.cli.main import main
from layerlmc.config import AugmentConfig, ScheduleConfig, TrainConfig, load_config
from layerlmc.core.checkpoints import load_state_dict
from layerlmc.errors import LayerLMCError
from layerlmc.train import read_history, train_runs
from layerlmc.train.augment import augment
from layerlmc.train.schedules import learning_rate

from .test_cli import _fails

TINY = ["epochs=2", "batch_size=32", "eval_max_examples=60", "model.args={width: 4, hidden: 8}",
        "schedule.name=warmup-cosine", "schedule.warmup_iters=5", "augment.crop_padding=2", "augment.flip=true"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(LayerLMCError, match="unknown config key 'optimzer' \\(did you mean 'optimizer'\\?\\)"):
        load_config(TrainConfig, None, ["optimzer.lr=0.1"])
    with pytest.raises(LayerLMCError, match="unknown config key 'schedule.nmae' \\(did you mean 'name'\\?\\)"):
        load_config(TrainConfig, None, ["schedule.nmae=cosine"])
    with pytest.raises(LayerLMCError, match="config key 'optimizer.lr'.*greater than 0"):
        load_config(TrainConfig, None, ["optimizer.lr=-1"])
    with pytest.raises(LayerLMCError, match="config key 'epochs'.*valid integer"):
        load_config(TrainConfig, None, ["epochs=many"])
    with pytest.raises(LayerLMCError, match="config key 'schedule.name'"):
        load_config(TrainConfig, None, ["schedule.name=exponential"])
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(LayerLMCError, match="not valid YAML"):
        load_config(TrainConfig, tmp_path / "bad.yaml")
    with pytest.raises(LayerLMCError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "none.yaml")


def test_example_configs_are_valid():
    from pathlib import Path

    from layerlmc.config import FederatedConfig

    kinds = {"train": TrainConfig, "federate": FederatedConfig}
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        command = path.read_text().split()[2]
        assert path.read_text().startswith(f"# layerlmc {command} configs/{path.name}"), path
        load_config(kinds[command], path)


def test_schedules():
    lr = lambda name, it, **kw: learning_rate(ScheduleConfig(name=name, **kw), 0.1, it, 10, 100)  # noqa: E731
    assert lr("constant", 555) == 0.1
    assert lr("cosine", 0) == pytest.approx(0.1) and lr("cosine", 999) == pytest.approx(0.1 * (1 + math_cos(0.9)) / 2)
    assert lr("warmup-cosine", 0, warmup_iters=100, warmup_start_lr=1e-4) == pytest.approx(1e-4)
    assert lr("warmup-cosine", 50, warmup_iters=100, warmup_start_lr=1e-4) == pytest.approx((1e-4 + 0.1) / 2)
    assert lr("step", 350, step_size=3, gamma=0.5) == pytest.approx(0.05)
    assert lr("multistep", 499, milestones=[0.5, 0.75]) == pytest.approx(0.1)
    assert lr("multistep", 500, milestones=[0.5, 0.75]) == pytest.approx(0.01)
    assert lr("multistep", 800, milestones=[5, 8]) == pytest.approx(0.001)
    assert lr("onecycle", 0) == pytest.approx(0.1 / 25)
    assert lr("onecycle", 300, pct_start=0.3) == pytest.approx(0.1)
    assert lr("onecycle", 999, pct_start=0.3) < 1e-5


def math_cos(fraction):
    import math

    return math.cos(math.pi * fraction)


def test_augment_is_a_pure_function_of_the_generator():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    config = AugmentConfig(crop_padding=1, flip=True)
    first = augment(images, config, torch.Generator().manual_seed(3))
    second = augment(images, config, torch.Generator().manual_seed(3))
    assert first.shape == images.shape and torch.equal(first, second)
    assert torch.equal(augment(images, AugmentConfig(), torch.Generator()), images)
    # a crop moves pixels by at most the padding: every output pixel is an input pixel or zero padding
    assert set(first.unique().tolist()) <= set(images.unique().tolist()) | {0.0}


def test_pair_trains_with_checkpoints_every_epoch(tiny_fmnist, tmp_path):
    config = load_config(TrainConfig, None, TINY)
    folder = train_runs(config, tmp_path / "pair", progress=False)
    for role in "ab":
        for epoch in range(3):
            assert (folder / "checkpoints" / role / f"epoch_{epoch:04d}.safetensors").is_file()
    init_a = load_state_dict(folder / "checkpoints" / "a" / "epoch_0000.safetensors")
    init_b = load_state_dict(folder / "checkpoints" / "b" / "epoch_0000.safetensors")
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    end_a = load_state_dict(folder / "checkpoints" / "a" / "epoch_0002.safetensors")
    end_b = load_state_dict(folder / "checkpoints" / "b" / "epoch_0002.safetensors")
    assert not torch.equal(end_a["conv1.weight"], end_b["conv1.weight"])  # different data order
    history = read_history(folder)
    assert [(r["role"], r["epoch"]) for r in history] == [(r, e) for r in "ab" for e in range(3)]
    assert all(0 <= r["test_accuracy"] <= 1 for r in history)
    assert json.loads((folder / "run.json").read_text())["status"] == "complete"
    different = load_config(TrainConfig, None, [*TINY, "init=different"])
    folder2 = train_runs(different, tmp_path / "different", progress=False)
    init_b2 = load_state_dict(folder2 / "checkpoints" / "b" / "epoch_0000.safetensors")
    assert not torch.equal(init_a["conv1.weight"], init_b2["conv1.weight"])


def test_killed_mid_epoch_resumes_to_the_same_weights(tiny_fmnist, tmp_path, monkeypatch):
    config = load_config(TrainConfig, None, [*TINY, "runs=1"])
    reference = train_runs(config, tmp_path / "clean", progress=False)
    calls = {"n": 0}
    original = torch.optim.SGD.step

    def step_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2 of 8 batches each
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_runs(config, tmp_path / "killed", progress=False)
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(torch.optim.SGD, "step", original)
    resumed = train_runs(config, tmp_path / "killed", progress=False)
    final = "checkpoints/a/epoch_0002.safetensors"
    clean, again = load_state_dict(reference / final), load_state_dict(resumed / final)
    assert all(torch.equal(clean[k], again[k]) for k in clean)
    history = read_history(resumed)
    assert [r["epoch"] for r in history] == [0, 1, 2]


def test_resume_with_another_config_is_refused(tiny_fmnist, tmp_path, capsys):
    config_file = tmp_path / "pair.yaml"
    config_file.write_text(yaml.safe_dump({"name": "pair", "runs": 1}))
    out = str(tmp_path / "pair")
    assert main(["train", str(config_file), *TINY, "--out", out]) == 0
    capsys.readouterr()
    _fails(capsys, ["train", str(config_file), *TINY, "optimizer.lr=0.2", "epochs=3", "--out", out],
           "was trained with another config", "epochs", "optimizer.lr")
    _fails(capsys, ["train", str(config_file), "optimzer.lr=0.1"], "did you mean 'optimizer'")


def test_torn_history_line_is_repaired_on_resume(tiny_fmnist, tmp_path):
    config = load_config(TrainConfig, None, [*TINY, "runs=1"])
    folder = train_runs(config, tmp_path / "run", progress=False)
    history = folder / "history.jsonl"
    lines = history.read_text().splitlines()
    # a kill while writing epoch 2's record, and before the optimizer file of epoch 2 was kept
    history.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])
    (folder / "checkpoints" / "a" / "epoch_0002.safetensors").unlink()
    train_runs(config, folder, progress=False)
    assert [r["epoch"] for r in read_history(folder)] == [0, 1, 2]
    assert all(json.loads(line) for line in history.read_text().splitlines())


def test_a_failed_start_does_not_block_the_corrected_config(tiny_fmnist, tmp_path, capsys):
    out = str(tmp_path / "run")
    config = tmp_path / "c.yaml"
    config.write_text("name: c\n")
    _fails(capsys, ["train", str(config), *TINY, "runs=3", "order_seeds=[1, 2]", "--out", out], "order_seeds has 2 seeds")
    assert main(["train", str(config), *TINY, "runs=1", "--out", out]) == 0
    # the device does not change the weights: the same folder resumes under another device name
    assert main(["train", str(config), *TINY, "runs=1", "device=cpu", "--out", out]) == 0


def test_schedule_edges():
    multistep = ScheduleConfig(name="multistep", milestones=[0.5, 1.0])
    assert learning_rate(multistep, 0.1, 499, 10, 100) == pytest.approx(0.1)
    assert learning_rate(multistep, 0.1, 500, 10, 100) == pytest.approx(0.01)
    onecycle = ScheduleConfig(name="onecycle", div_factor=25, final_div_factor=1e4)
    assert learning_rate(onecycle, 0.1, 39, 1, 40) == pytest.approx(0.1 / 25 / 1e4)


def test_run_splits_train_each_run_on_its_own_split(tmp_path):
    data_file = tmp_path / "halves.py"
    data_file.write_text(
        "import torch\n"
        "def make(n=24):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)\n"
        "    return {'half_a': (x[:12], y[:12]), 'half_b': (x[12:], y[12:]), 'test': (x, y)}\n"
    )
    base = {"epochs": 1, "batch_size": 4, "device": "cpu",
            "model": {"name": "mlp", "args": {"in_features": 4, "hidden": [5], "num_classes": 3}},
            "data": {"name": f"{data_file}:make", "train_split": "half_a"}}
    split_runs = train_runs(load_config(TrainConfig, {**base, "data": {**base["data"], "run_splits": ["half_a", "half_b"]}}),
                            tmp_path / "split", progress=False)
    same_runs = train_runs(load_config(TrainConfig, base), tmp_path / "same", progress=False)
    def final(folder, role):
        return load_state_dict(folder / "checkpoints" / role / "epoch_0001.safetensors")

    assert torch.equal(final(split_runs, "a")["head.weight"], final(same_runs, "a")["head.weight"])
    assert not torch.equal(final(split_runs, "b")["head.weight"], final(same_runs, "b")["head.weight"])
    with pytest.raises(LayerLMCError, match="run_splits has 1 splits for 2 runs"):
        train_runs(load_config(TrainConfig, {**base, "data": {**base["data"], "run_splits": ["half_a"]}}),
                   tmp_path / "bad", progress=False)
