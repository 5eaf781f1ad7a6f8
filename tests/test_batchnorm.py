"""The BatchNorm policies (--bn): each one checked against the same computation written out."""

import copy
import json
import logging

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from layerlmc import barriers
from layerlmc.api import robustness, trajectory
from layerlmc.cli.main import main
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.core.paths import Path, Point, full_path, interpolate
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate import BN_POLICIES, Evaluator, prepare_splits, statistics_batches
from layerlmc.evaluate.options import build_evaluator
from layerlmc.evaluate.points import evaluate_paths

from .test_cli import _args, _fails


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.fc(x))))


def _data(n_train=40, n_test=17, shape=(2, 5, 5)):
    g = torch.Generator().manual_seed(3)
    return {
        "train": (torch.randn(n_train, *shape, generator=g) + 0.5,
                  torch.randint(0, 3, (n_train,), generator=g)),
        "test": (torch.randn(n_test, *shape, generator=g),
                 torch.randint(0, 3, (n_test,), generator=g)),
    }


def _pair(make=ConvNet):
    """Two trained-looking endpoints with different weights and running statistics."""
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = make()
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(5 + seed)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    return states


def _midpoint(a, b):
    keys = frozenset(k for k, v in a.items() if v.is_floating_point())
    return interpolate(a, b, Point(full_path(keys, (0.5,)), 0.5))


def _loss_by_hand(model, state, x, y, batch_size, train_bn=False):
    """Per-example mean cross-entropy of ``state``, batch by batch, BN in train mode if asked."""
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    model.eval()
    if train_bn:
        model.train()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size])
            total += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum").item()
    return total / len(y)


def _bn_flags(model):
    return [(m.training, m.momentum, m.track_running_stats)
            for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]


def test_recompute_gives_the_statistics_of_a_plain_pass():
    a, b = _pair()
    data = _data()
    model = ConvNet().eval()
    flags = _bn_flags(model)
    evaluator = build_evaluator(model, data, a, splits=None, max_examples=None, seed=7, batch_size=8, device="cpu", bn="recompute", bn_batches=3, bn_batch_size=5)
    batches = evaluator.bn_batches
    assert [len(x) for x in batches] == [5, 5, 5]
    # seeded rows of the train split, none twice
    rows = {tuple(x.flatten().tolist()) for x in data["train"][0]}
    picked = [tuple(x.flatten().tolist()) for batch in batches for x in batch]
    assert set(picked) <= rows and len(set(picked)) == 15
    again = statistics_batches(data, "train", 3, 5, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    assert not torch.equal(statistics_batches(data, "train", 3, 5, seed=8)[0], batches[0])

    state = _midpoint(a, b)
    before = {k: v.clone() for k, v in state.items()}
    prepared = evaluator.prepare(state)

    # by hand: reset, cumulative average, train mode, the same batches
    hand = copy.deepcopy(model)
    hand.load_state_dict(state)
    for module in hand.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    hand.train()
    with torch.no_grad():
        for x in batches:
            hand(x)
    for key, value in hand.state_dict().items():
        assert torch.allclose(prepared[key].double(), value.double(), atol=1e-6, rtol=0), key
        if key.endswith(("weight", "bias")):
            assert prepared[key] is state[key]  # only the statistics are new tensors
    assert int(prepared["bn.num_batches_tracked"]) == 3
    assert not torch.allclose(prepared["bn.running_var"], state["bn.running_var"])
    # the point's own tensors and the user's model are as they were
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert _bn_flags(model) == flags and not model.training

    x, y = data["test"]
    metrics = evaluator.evaluate(state, "test")
    expected = _loss_by_hand(model, hand.state_dict(), x, y, 8)
    assert metrics.loss == pytest.approx(expected, abs=1e-6)
    # a prepared state is not recomputed again, and gives the same numbers
    assert evaluator.prepare(prepared) is prepared
    assert evaluator.evaluate(prepared, "test") == metrics


def test_batch_stats_normalise_each_batch_and_change_nothing():
    a, b = _pair()
    data = _data()
    model = ConvNet()
    flags = _bn_flags(model.eval())
    evaluator = build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=6, device="cpu", bn="batch-stats")
    state = _midpoint(a, b)
    before = {k: v.clone() for k, v in state.items()}
    for split in ("train", "test"):
        x, y = data[split]
        metrics = evaluator.evaluate(state, split)
        assert metrics.loss == pytest.approx(_loss_by_hand(model, state, x, y, 6, train_bn=True),
                                             abs=1e-6)
        # not what the stored statistics give
        assert abs(metrics.loss - _loss_by_hand(model, state, x, y, 6)) > 1e-4
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert _bn_flags(model) == flags and not model.training
    assert evaluator.bn_summary == "batch-stats over evaluation batches of 6"


def test_keep_base_takes_the_statistics_of_the_base():
    a, b = _pair()
    data = _data()
    model = ConvNet()
    evaluator = build_evaluator(model, data, a, splits=["test"], max_examples=None, seed=0, batch_size=64, device="cpu", bn="keep-base")
    floats = [k for k, v in a.items() if v.is_floating_point()]
    bn_group = frozenset(k for k in a if k.startswith("bn."))
    paths = [full_path(floats, (0.5, 1.0)),
             Path("group", "bn", 1, "b", None, bn_group, (0.5,)),
             Path("group", "conv", 0, "a", None, frozenset(k for k in a if k.startswith("conv.")),
                  (0.5,))]
    records = evaluate_paths(evaluator, a, b, paths)
    x, y = data["test"]

    def by_hand(base, moved):
        state = {k: (0.5 * a[k] + 0.5 * b[k]) if k in moved and "running" not in k else base[k]
                 for k in a}
        return _loss_by_hand(model, state, x, y, 64)

    def loss_of(kind, group, alpha):
        return next(r["loss"] for r in records
                    if r["kind"] == kind and r["group"] == group and r["alpha"] == alpha)

    assert loss_of("full", "full", 0.5) == pytest.approx(by_hand(a, set(floats)), abs=1e-6)
    assert loss_of("group", "bn", 0.5) == pytest.approx(by_hand(b, bn_group), abs=1e-6)
    assert loss_of("group", "conv", 0.5) == pytest.approx(by_hand(a, {"conv.weight", "conv.bias"}),
                                                          abs=1e-6)
    # at α=1 the full path is b's weights with a's statistics: not model b
    full_end = {k: b[k] if "running" not in k and k in floats else a[k] for k in a}
    assert loss_of("full", "full", 1.0) == pytest.approx(_loss_by_hand(model, full_end, x, y, 64),
                                                         abs=1e-6)
    assert loss_of("full", "full", 1.0) != pytest.approx(loss_of("endpoint", "full", 1.0))


def test_interpolate_is_the_default_and_blends_the_statistics():
    a, b = _pair()
    data = _data()
    model = ConvNet()
    x, y = data["test"]
    state = _midpoint(a, b)
    default = build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=16, device="cpu")
    chosen = build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=16, device="cpu", bn="interpolate")
    blended = {k: 0.5 * a[k] + 0.5 * b[k] if a[k].is_floating_point() else a[k] for k in a}
    expected = _loss_by_hand(model, blended, x, y, 16)
    assert default.evaluate(state, "test").loss == pytest.approx(expected, abs=1e-6)
    assert chosen.evaluate(state, "test") == default.evaluate(state, "test")
    assert default.bn_summary == "interpolate"


@pytest.mark.parametrize("bn", BN_POLICIES)
def test_identical_endpoints_have_zero_barriers(bn):
    a, _ = _pair()
    table = barriers(ConvNet(), a, {k: v.clone() for k, v in a.items()}, _data(), bn=bn,
                     bn_batches=2, bn_batch_size=8, batch_size=9, cumulative=["shallow"],
                     definitions=["midpoint", "max"], device="cpu", progress=False)
    assert len(table) and (table["value"].abs() < 1e-9).all()


def test_policies_differ_on_a_bn_network():
    a, b = _pair()
    full = {}
    for bn in BN_POLICIES:
        table = barriers(ConvNet(), a, b, _data(), bn=bn, bn_batches=2, bn_batch_size=8,
                         layerwise=False, device="cpu", progress=False)
        row = table.query("kind == 'full' and split == 'test' and metric == 'loss'")
        full[bn] = float(row["value"].iloc[0])
    assert len({round(v, 6) for v in full.values()}) == len(BN_POLICIES), full


def test_cli_records_the_policy_and_refuses_another(user_files, capsys):
    f = user_files
    out = f["dir"] / "bn"
    args = _args(f, out, "--bn", "recompute", "--bn-batches", "2", "--bn-batch-size", "16",
                 "--no-plots")
    assert main(args) == 0
    capsys.readouterr()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["bn"] == "recompute" and config["bn_batches"] == 2
    assert config["bn_batch_size"] == 16 and config["bn_split"] == "train"
    inputs = json.loads((out / "run.json").read_text())["inputs"]
    expected = "recompute from 2 batches of 16 from split 'train' (seed 0)"
    assert inputs["BatchNorm policy"] == expected
    before = (out / "points.jsonl").read_text()
    # the same options continue the run; another policy (or recompute setting) is refused
    assert main(args) == 0
    capsys.readouterr()
    assert (out / "points.jsonl").read_text() == before
    _fails(capsys, _args(f, out, "--no-plots"),
           f"{out} holds results computed with another BatchNorm policy", "another --out")
    _fails(capsys, [*args, "--bn-batch-size", "8"], "another BatchNorm policy")
    _fails(capsys, _args(f, f["dir"] / "x", "--bn", "recompte"), "Invalid value for '--bn'",
           "recompute")
    _fails(capsys, _args(f, f["dir"] / "y", "--bn", "recompute", "--bn-split", "trian"),
           "split 'trian'", "did you mean 'train'", "--bn-split")
    _fails(capsys, _args(f, f["dir"] / "z", "--bn", "recompute", "--bn-batch-size", "1"),
           "recomputing BatchNorm statistics", "--bn recompute", "more than 1 value")
    assert (out / "points.jsonl").read_text() == before


def test_a_model_without_batchnorm_takes_any_policy_with_one_note(caplog):
    torch.manual_seed(0)
    a = NoNorm().state_dict()
    torch.manual_seed(1)
    b = NoNorm().state_dict()
    data = {"test": _data(n_test=11, shape=(4,))["test"]}  # no train split: nothing is drawn
    tables = {}
    for bn in BN_POLICIES:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="layerlmc"):
            tables[bn] = barriers(NoNorm(), a, b, data, bn=bn, device="cpu", progress=False)
        notes = [r for r in caplog.records if "no BatchNorm layer" in r.getMessage()]
        assert len(notes) == (0 if bn == "interpolate" else 1), bn
    for bn in BN_POLICIES:
        pd.testing.assert_frame_equal(tables[bn], tables["interpolate"])
    assert Evaluator(NoNorm(), prepare_splits(data), bn="recompute").bn_summary == "no BatchNorm"


def test_library_mistakes_are_one_line():
    a, _ = _pair()
    with pytest.raises(LayerLMCError, match="unknown BatchNorm policy 'keepbase'.*keep-base"):
        barriers(ConvNet(), a, a, _data(), bn="keepbase", device="cpu")
    with pytest.raises(LayerLMCError, match="needs batches"):
        Evaluator(ConvNet(), prepare_splits(_data()), bn="recompute")
    with pytest.raises(LayerLMCError, match="--bn-batches must be positive"):
        statistics_batches(_data(), "train", 0, 4)


def test_a_small_split_gives_the_batches_it_holds():
    data = _data(n_train=12)
    assert [len(x) for x in statistics_batches(data, "train", 10, 5)] == [5, 5]
    assert [len(x) for x in statistics_batches(data, "train", 2, 50)] == [12]


def test_trajectory_and_robustness_take_the_policy(tmp_path):
    a, b = _pair()
    folders = {}
    for name, last in (("a", a), ("b", b)):
        folder = tmp_path / name
        folder.mkdir()
        save_state_dict(a, folder / "epoch_0.safetensors")  # a shared initialization
        save_state_dict(last, folder / "epoch_1.safetensors")
        folders[name] = {0: folder / "epoch_0.safetensors", 1: folder / "epoch_1.safetensors"}
    out = tmp_path / "t"
    table, _ = trajectory(ConvNet(), folders["a"], folders["b"], _data(), out, bn="recompute",
                          bn_batches=2, bn_batch_size=8, device="cpu", plots=False,
                          progress=False)
    assert (table[table["step"] == 0]["value"].abs() < 1e-9).all()
    assert (table[table["step"] == 1]["value"].abs() > 0).any()
    inputs = json.loads((out / "run.json").read_text())["inputs"]
    assert inputs["BatchNorm policy"].startswith("recompute from 2 batches of 8")
    with pytest.raises(LayerLMCError, match="another BatchNorm policy"):
        trajectory(ConvNet(), folders["a"], folders["b"], _data(), out, device="cpu", plots=False)

    # keep-base: the statistics move along neither direction, so a group of statistics only
    # (as --per-tensor makes them) stays at its base
    rob = robustness(ConvNet(), a, b, _data(), tmp_path / "r", samples=2, per_tensor=True,
                     bn="keep-base", device="cpu", plots=False, progress=False)
    base = rob[rob["step_fraction"] == 0.0].set_index(["base", "split", "group", "direction"])
    half = rob[rob["step_fraction"] == 0.5]
    stats = half[half["group"].isin(["bn.running_mean", "bn.running_var"])]
    assert len(stats)
    for row in stats.itertuples():
        assert row.loss_mean == base.loc[(row.base, row.split, row.group, "average"), "loss_mean"]
    moving = half[half["group"] == "conv"]
    assert (moving["loss_mean"] != base.loc[(moving["base"].iloc[0], moving["split"].iloc[0],
                                             "conv", "average"), "loss_mean"]).all()
