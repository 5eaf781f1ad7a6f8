"""Robustness: the averaging direction vs random directions of the same norm (PAPER.md §4.1)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from layerlmc.analyses.robustness import (
    averaging_paths,
    moved,
    random_direction,
    robustness_groups,
    robustness_summary,
    step_fraction,
)
from layerlmc.api import barriers, robustness
from layerlmc.cli.robustness import robustness_command
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate.plain import Evaluator
from layerlmc.specs import build_data


def _pair(user_files):
    model = user_files["namespace"]["make_net"]()
    data = build_data(f"{user_files['data']}:make_splits", {})
    return model, user_files["state_a"], user_files["state_b"], data


def _lines(folder):
    return (folder / "points.jsonl").read_text().splitlines()


def _records(folder):
    return [json.loads(line) for line in _lines(folder)]


def test_random_directions_have_the_norm_of_the_averaging_step(user_files):
    model, a, b, _ = _pair(user_files)
    groups = robustness_groups(a, model)
    assert [g.name for g in groups] == ["fc1", "norm", "fc2", "head"]
    for group in groups:
        keys = [k for k in group.keys if a[k].is_floating_point()]
        distance = math.sqrt(sum(float(((b[k].double() - a[k].double()) ** 2).sum()) for k in keys))
        for base, state in (("a", a), ("b", b)):
            steps = [
                random_direction(
                    a, b, keys, seed=3, step=7, group_index=group.index, base=base, sample=i
                )
                for i in range(3)
            ]
            for delta in steps:
                assert set(delta) == set(keys)  # num_batches_tracked never moves
                norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in delta.values()))
                assert norm == pytest.approx(distance, rel=1e-6)
                point = moved(state, delta, 1.0)
                for key in keys:
                    torch.testing.assert_close(point[key] - state[key], delta[key])
                for key in set(state) - set(keys):
                    assert point[key] is state[key]  # not copied
            assert not torch.equal(steps[0][keys[0]], steps[1][keys[0]])
            again = random_direction(
                a, b, keys, seed=3, step=7, group_index=group.index, base=base, sample=0
            )
            assert all(torch.equal(again[k], steps[0][k]) for k in keys)
    other = random_direction(
        a, b, ["fc1.weight"], seed=4, step=7, group_index=0, base="a", sample=0
    )
    first = random_direction(
        a, b, ["fc1.weight"], seed=3, step=7, group_index=0, base="a", sample=0
    )
    assert not torch.equal(other["fc1.weight"], first["fc1.weight"])


def test_per_tensor_groups_pair_weight_and_bias():
    state = {
        "enc.in_proj_weight": torch.zeros(6, 2),
        "enc.in_proj_bias": torch.zeros(6),
        "enc.out_proj.weight": torch.zeros(2, 2),
        "enc.out_proj.bias": torch.zeros(2),
        "norm.weight": torch.ones(2),
        "norm.bias": torch.zeros(2),
        "norm.running_mean": torch.zeros(2),
        "norm.running_var": torch.ones(2),
        "norm.num_batches_tracked": torch.tensor(3),
        "pos_embedding": torch.zeros(1, 2),
        "head.weight": torch.zeros(3, 2),
    }
    groups = {g.name: g.keys for g in robustness_groups(state, per_tensor=True)}
    assert groups == {
        "enc.in_proj": ("enc.in_proj_weight", "enc.in_proj_bias"),
        "enc.out_proj": ("enc.out_proj.weight", "enc.out_proj.bias"),
        "norm": ("norm.weight", "norm.bias"),
        "norm.running_mean": ("norm.running_mean",),
        "norm.running_var": ("norm.running_var",),
        "pos_embedding": ("pos_embedding",),
        "head": ("head.weight",),
    }
    assert [g.name for g in robustness_groups(state, per_tensor=True, layers="head,norm")] == [
        "norm",
        "head",
    ]
    with pytest.raises(LayerLMCError, match="--per-tensor"):
        robustness_groups(state, groups="param", per_tensor=True)


def test_step_fraction_is_the_distance_from_the_base():
    assert step_fraction("average", "a", 0.25) == 0.25
    assert step_fraction("average", "b", 0.25) == 0.75  # group paths keep alpha 0 = a
    assert step_fraction("group", "b", 0.3) == 0.7
    assert step_fraction("random", "b", 0.25) == 0.25
    paths = averaging_paths(robustness_groups({"l.weight": torch.zeros(2)}), ["a", "b"], (0.0, 0.3))
    assert [(p.base, p.alphas) for p in paths] == [("a", (0.0, 0.3)), ("b", (0.7, 1.0))]


def test_pair_records_resume_and_outputs(user_files, tmp_path, monkeypatch):
    model, a, b, data = _pair(user_files)
    out = tmp_path / "rob"
    table = robustness(model, a, b, data, out, samples=3, seed=1, splits=["test"], progress=False)
    records = _records(out)
    assert len(
        {
            json.dumps({k: r[k] for k in r if k not in ("loss", "accuracy", "n")}, sort_keys=True)
            for r in records
        }
    ) == len(records)

    # the averaging direction is the barrier analyses' group path, record for record
    reference = tmp_path / "bar"
    barriers(
        model,
        a,
        b,
        data,
        layer_alphas="0,0.5,1",
        splits=["test"],
        out=reference,
        plots=False,
        progress=False,
    )
    groups = sorted(json.dumps(r, sort_keys=True) for r in _records(out) if r["kind"] == "group")
    expected = sorted(
        json.dumps(r, sort_keys=True) for r in _records(reference) if r["kind"] == "group"
    )
    assert groups == expected and groups

    random = [r for r in records if r["kind"] == "direction"]
    assert {r["direction"] for r in random} == {"random"} and {r["sample"] for r in random} == {
        0,
        1,
        2,
    }
    assert all(r["sigma"] is None for r in random)
    ends = {(r["base"], r["split"]): r for r in records if r["kind"] == "endpoint"}
    for r in random:
        if r["alpha"] == 0.0:  # t = 0 is the base itself
            assert (r["loss"], r["accuracy"]) == (
                ends[(r["base"], r["split"])]["loss"],
                ends[(r["base"], r["split"])]["accuracy"],
            )
    start = table[table["step_fraction"] == 0.0]
    for row in start.itertuples():
        assert row.loss_mean == pytest.approx(ends[(row.base, row.split)]["loss"])
        assert row.loss_std == 0.0 or row.direction == "average"
    assert set(table["direction"]) == {"average", "random"}
    assert set(table.loc[table["direction"] == "random", "samples"]) == {3}
    assert set(table.loc[table["direction"] == "average", "samples"]) == {1}
    # base b's full averaging step is b with a's group: the group path's alpha 0
    b_full = table[
        (table["base"] == "b") & (table["direction"] == "average") & (table["step_fraction"] == 1.0)
    ]
    assert set(b_full["alpha"]) == {0.0}
    csv = pd.read_csv(out / "robustness.csv")
    assert list(csv.columns) == [
        "step",
        "unit",
        "group",
        "group_index",
        "base",
        "split",
        "direction",
        "step_fraction",
        "alpha",
        "loss_mean",
        "loss_std",
        "accuracy_mean",
        "accuracy_std",
        "samples",
    ]
    assert len(csv) == len(table)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {
        f"heatmap_test_{metric}.{ext}" for metric in ("loss", "error") for ext in ("png", "pdf")
    } | {"curves_test_loss.png"}
    summary = robustness_summary(table, 0.5)
    assert len(summary) == 2 * 4 and set(summary["higher"]) <= {"average", "random", "equal", "n/a"}

    # a rerun evaluates nothing and appends nothing; the same seed elsewhere gives the same numbers
    calls = {"n": 0}
    original = Evaluator.evaluate

    def counting(self, *args):
        calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    before = _lines(out)
    kwargs = {"seed": 1, "splits": ["test"], "plots": False, "progress": False}
    again = robustness(model, a, b, data, out, samples=3, **kwargs)
    assert calls["n"] == 0 and _lines(out) == before
    pd.testing.assert_frame_equal(again, table)
    more = robustness(model, a, b, data, out, samples=4, **kwargs)
    assert calls["n"] == 4 * 2 * 2  # one new sample: groups × bases × (t = ½, 1)
    assert set(more.loc[more["direction"] == "random", "samples"]) == {4}

    # killed half-way and rerun: the records of one clean run, each once
    def evaluate_then_die(self, *args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original(self, *args)

    calls["n"] = 0
    monkeypatch.setattr(Evaluator, "evaluate", evaluate_then_die)
    copy = tmp_path / "copy"
    with pytest.raises(KeyboardInterrupt):
        robustness(model, a, b, data, copy, samples=3, **kwargs)
    assert json.loads((copy / "run.json").read_text())["status"] == "interrupted"
    assert 0 < len(_lines(copy)) < len(before)
    monkeypatch.setattr(Evaluator, "evaluate", original)
    robustness(model, a, b, data, copy, samples=3, **kwargs)
    assert sorted(_lines(copy)) == sorted(before)  # the same seed gives the same numbers
    with pytest.raises(LayerLMCError, match="another direction seed"):
        robustness(model, a, b, data, out, samples=3, **{**kwargs, "seed": 2})


def test_bad_options_are_one_line_errors(user_files, tmp_path):
    model, a, b, data = _pair(user_files)
    with pytest.raises(LayerLMCError, match="--samples must be at least 1"):
        robustness(model, a, b, data, samples=0)
    with pytest.raises(LayerLMCError, match="--at 0.3 is not on the step-fraction grid 0,0.5,1"):
        robustness(model, a, b, data, at=0.3)
    with pytest.raises(LayerLMCError, match="unknown base 'c'"):
        robustness(model, a, b, data, bases=["c"])
    result = CliRunner().invoke(
        robustness_command,
        [
            str(user_files["a"]),
            "--b",
            str(user_files["b"]),
            "--model",
            f"{user_files['model']}:make_net",
            "--data",
            f"{user_files['data']}:make_splits",
            "--out",
            str(tmp_path / "x"),
            "--samples",
            "0",
        ],
    )
    assert result.exit_code == 2 and "'--samples': 0 is not in the range x>=1" in result.output


def test_cli_on_a_pair_of_files(user_files, tmp_path):
    out = tmp_path / "files"
    args = [
        str(user_files["a"]),
        "--b",
        str(user_files["b"]),
        "--model",
        f"{user_files['model']}:make_net",
        "--data",
        f"{user_files['data']}:make_splits",
        "--out",
        str(out),
        "--samples",
        "2",
        "--alphas",
        "0:1:5",
        "--bases",
        "a",
        "--splits",
        "test",
        "--no-plots",
    ]
    result = CliRunner().invoke(robustness_command, args)
    assert result.exit_code == 0, result.output
    assert "test loss, base a" in result.output and "higher" in result.output
    assert str(out / "robustness.csv") in result.output
    table = pd.read_csv(out / "robustness.csv")
    assert sorted(table["step_fraction"].unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(table["base"]) == {"a"} and table["step"].isna().all()
    assert not (out / "figures" / "heatmap_test_loss.png").exists()


@pytest.fixture()
def trained(user_files):
    """A training-run folder as `layerlmc train` lays it out, of the tiny user model: a shared
    initialization at epoch 0, then a and b apart (no training, to stay fast)."""
    folder = user_files["dir"] / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model:\n  name: {user_files['model']}:make_net\n  args: {{width: 6}}\n"
        f"data:\n  name: {user_files['data']}:make_splits\n  args: {{}}\n"
    )
    a, b = user_files["state_a"], user_files["state_b"]
    for role, state in (("a", a), ("b", b)):
        for epoch, weights in ((0, a), (1, state), (2, {k: 2 * v for k, v in state.items()})):
            save_state_dict(
                weights, folder / "checkpoints" / role / f"epoch_{epoch:04d}.safetensors"
            )
    return folder


def test_cli_on_a_training_run(trained):
    runner = CliRunner()
    result = runner.invoke(robustness_command, [str(trained), "--samples", "2", "--no-plots"])
    assert result.exit_code == 0, result.output
    out = trained / "robustness"
    table = pd.read_csv(out / "robustness.csv")
    assert list(table["step"].unique()) == [2]  # the last step only, by default
    assert set(table["group"]) == {"fc1", "norm", "fc2", "head"}
    assert (
        "test loss, base a at epoch 2" in result.output and "random (mean ± std)" in result.output
    )

    # the shared initialization: a and b are equal, so every direction stays at the base
    result = runner.invoke(
        robustness_command, [str(trained), "--samples", "2", "--steps", "0,2", "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "robustness.csv")
    assert sorted(table["step"].unique()) == [0, 2]
    for _, rows in table[table["step"] == 0].groupby("split"):
        assert rows["loss_mean"].nunique() == 1 and rows["accuracy_mean"].nunique() == 1
    result = runner.invoke(
        robustness_command,
        [
            str(trained),
            "--every",
            "1",
            "--samples",
            "1",
            "--bases",
            "a",
            "--splits",
            "test",
            "--no-plots",
        ],
    )
    assert result.exit_code == 0 and sorted(
        pd.read_csv(out / "robustness.csv")["step"].unique()
    ) == [0, 1, 2]

    result = runner.invoke(robustness_command, [str(trained), "--pair", "a,c"])
    assert result.exit_code != 0 and "has no run 'c'" in str(result.exception)
    result = runner.invoke(robustness_command, [str(trained), "--steps", "5"])
    assert result.exit_code != 0 and "no checkpoint pair for step(s) 5" in str(result.exception)
    ckpts = trained / "checkpoints"
    (ckpts / "b" / "epoch_0002.safetensors").write_bytes(
        (ckpts / "a" / "epoch_0002.safetensors").read_bytes()
    )
    result = runner.invoke(robustness_command, [str(trained), "--no-plots"])
    assert result.exit_code != 0 and "checkpoints of epoch 2 changed" in str(result.exception)
