"""Subspace / null-space noise (PAPER.md §4.2): the directions' geometry, the records, the CLI."""

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import layerlmc.data.synthetic  # noqa: F401  (registers the "classification" dataset)
from layerlmc.analyses.subspace import (
    averaging_direction,
    check_memory,
    direction_generator,
    nullspace_direction,
    orthonormal_basis,
    parse_sigmas,
    perturb,
    span_direction,
    trajectory_snapshots,
)
from layerlmc.analyses.trajectory import find_checkpoints
from layerlmc.api import subspace
from layerlmc.cli.subspace import subspace_command
from layerlmc.config import TrainConfig, load_config
from layerlmc.data.synthetic import classification, make_classification
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate.plain import Evaluator
from layerlmc.models import mlp
from layerlmc.train import train_runs

TINY_DATA = {"n_samples": 90, "n_features": 6, "seed": 3}
TINY_MODEL = {"in_features": 6, "hidden": [8, 8], "num_classes": 3}


def _snapshots(rows=40, columns=5, seed=0):
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


def _in_span(v, matrix):
    coefficients = torch.linalg.lstsq(matrix.double(), v.double().unsqueeze(1)).solution
    return float(torch.linalg.vector_norm(matrix.double() @ coefficients - v.double().unsqueeze(1)))


# -- geometry -----------------------------------------------------------------------------------
def test_basis_is_orthonormal_with_the_numerical_rank():
    base = _snapshots(30, 3)
    # repeated and dependent snapshots (a run's late epochs) add no directions
    matrix = torch.cat([base, base[:, :1], base[:, :1] + 2 * base[:, 1:2]], dim=1)
    basis = orthonormal_basis(matrix)
    assert basis.shape == (30, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    for column in matrix.T:
        assert _in_span(column, basis) < 1e-4 * float(column.norm())
    assert orthonormal_basis(torch.zeros(10, 2)).shape == (10, 0)
    # oriented towards the origin: no basis vector leans towards the snapshots' sum
    assert (basis.T @ matrix.sum(dim=1) <= 1e-5).all()


@pytest.mark.parametrize("coefficients", ["uniform", "gaussian"])
def test_span_directions_lie_in_the_span_and_have_unit_norm(coefficients):
    matrix = _snapshots()
    basis = orthonormal_basis(matrix)
    for sample in range(5):
        v = span_direction(basis, direction_generator(0, "span", "full", 1.0, sample), coefficients)
        assert abs(float(v.norm()) - 1) < 1e-5
        assert _in_span(v, matrix) < 1e-5
    if coefficients == "uniform":
        # the notebooks' coefficients: every component along the basis is non-negative
        v = span_direction(basis, direction_generator(0, "span", "full", 2.0, 0), coefficients)
        assert (basis.T @ v >= -1e-6).all()


def test_nullspace_directions_are_orthogonal_to_the_span_and_unit_norm():
    matrix = _snapshots(200, 7)
    basis = orthonormal_basis(matrix)
    directions = [nullspace_direction(basis, direction_generator(1, "nullspace", "full", s, 0))
                  for s in (0.5, 1.0, 2.0)]
    for v in directions:
        assert abs(float(v.norm()) - 1) < 1e-5
        # orthogonal to every snapshot, relative to the snapshots' size
        assert float((matrix.T @ v).abs().max()) < 1e-5 * float(matrix.norm(dim=0).max())
    # fresh draws per point, the same draw for the same point
    assert float((directions[0] - directions[1]).norm()) > 0.1
    again = nullspace_direction(basis, direction_generator(1, "nullspace", "full", 0.5, 0))
    assert torch.equal(again, directions[0])


def test_average_direction_moves_a_and_b_apart_exactly():
    torch.manual_seed(0)
    model = mlp(**TINY_MODEL)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    keys = list(a)

    def flat(state):
        return torch.cat([state[k].reshape(-1) for k in keys])

    d_hat = averaging_direction(flat(a), flat(b))
    sigma = 1.7
    moved_a, moved_b = perturb(a, keys, d_hat, sigma), perturb(b, keys, -d_hat, sigma)
    gap = float((flat(a) - flat(b)).norm())
    new_gap = flat(moved_a) - flat(moved_b)
    assert abs(float(new_gap.norm()) - (gap + 2 * sigma)) < 1e-4
    assert torch.allclose(new_gap / new_gap.norm(), d_hat, atol=1e-5)  # along the line, outwards
    assert abs(float((flat(moved_a) - flat(a)).norm()) - sigma) < 1e-5
    with pytest.raises(LayerLMCError, match="identical"):
        averaging_direction(flat(a), flat(a))


def test_analysis_moves_each_network_along_its_own_side_of_the_line(tiny_pair):
    model, a, b, data = tiny_pair
    seen = []
    original = Evaluator.evaluate

    def capture(self, state, split):
        seen.append({k: v.clone() for k, v in state.items()})
        return original(self, state, split)

    sigma = 0.5
    try:
        Evaluator.evaluate = capture
        subspace(model, a, b, data, directions=["average"], sigmas=[sigma], full=False,
                 per_layer=True, layers=["fc2"], plots=False)
    finally:
        Evaluator.evaluate = original
    clean_a, clean_b, moved_a, moved_b = seen
    keys = [k for k, _ in model.named_parameters()]
    delta = torch.cat([(a[k] - b[k]).reshape(-1) for k in keys])
    for key in keys:
        if key.startswith("fc2."):
            step = sigma * (a[key] - b[key]) / delta.norm()  # the full d̂, other groups zeroed
            assert torch.allclose(moved_a[key] - clean_a[key], step, atol=1e-6)
            assert torch.allclose(moved_b[key] - clean_b[key], -step, atol=1e-6)
        else:
            assert torch.equal(moved_a[key], clean_a[key])
            assert torch.equal(moved_b[key], clean_b[key])


# -- options and errors -------------------------------------------------------------------------
def test_sigma_ranges_and_their_errors():
    assert parse_sigmas("0:1:3") == (0.0, 0.5, 1.0)
    assert parse_sigmas("0.1,2") == (0.1, 2.0)
    drawn = parse_sigmas("0.001:10:50", "uniform", seed=4)
    assert len(drawn) == 50 and list(drawn) == sorted(drawn)
    assert 0.001 <= drawn[0] and drawn[-1] <= 10
    assert drawn == parse_sigmas("0.001:10:50", "uniform", seed=4)
    with pytest.raises(LayerLMCError, match="MIN 5 is larger than MAX 1"):
        parse_sigmas("5:1:10")
    with pytest.raises(LayerLMCError, match="N must be at least 1"):
        parse_sigmas("0:1:0")
    with pytest.raises(LayerLMCError, match="MIN:MAX:N"):
        parse_sigmas("0:1")
    with pytest.raises(LayerLMCError, match="non-negative"):
        parse_sigmas("-1,2")


def test_memory_limit_names_the_size_and_the_way_out(tiny_pair):
    with pytest.raises(LayerLMCError) as caught:
        check_memory(1_000_000_000, 100, 2 * 1024**3, "the full network")
    message = str(caught.value)
    assert "372.5 GiB" in message and "1,000,000,000 parameters × 100 snapshots" in message
    assert "--per-layer" in message and "--every" in message and "\n" not in message
    model, a, b, data = tiny_pair
    with pytest.raises(LayerLMCError, match="would take .* over the limit of 100 bytes"):
        subspace(model, a, b, data, sigmas="0:1:2", max_memory=100, plots=False)


def test_bad_options_are_user_errors(tiny_pair):
    model, a, b, data = tiny_pair
    with pytest.raises(LayerLMCError, match="--samples must be at least 1"):
        subspace(model, a, b, data, samples=0)
    with pytest.raises(LayerLMCError, match="larger than MAX"):
        subspace(model, a, b, data, sigmas="3:1:5")
    with pytest.raises(LayerLMCError, match="unknown direction 'nulspace'"):
        subspace(model, a, b, data, directions=["nulspace"])
    with pytest.raises(LayerLMCError, match="needs the snapshots"):
        subspace(model, a, b, data, span="trajectory")


# -- the synthetic data -------------------------------------------------------------------------
def test_synthetic_classification_is_deterministic_and_split_in_halves():
    first, second = classification(), classification()
    assert first.keys() == {"train", "test", "half_a", "half_b"}
    for name in first:
        assert torch.equal(first[name][0], second[name][0])
        assert torch.equal(first[name][1], second[name][1])
    x_train, y_train = first["train"]
    assert x_train.shape == (402, 16) and first["test"][0].shape == (198, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert set(y_train.tolist()) == {0, 1, 2}
    assert len(first["half_a"][1]) == len(first["half_b"][1]) == 201
    assert torch.equal(torch.cat([first["half_a"][0], first["half_b"][0]]), x_train)
    assert torch.equal(torch.cat([first["half_a"][1], first["half_b"][1]]), y_train)
    other = classification(seed=11)
    assert not torch.equal(other["train"][0], x_train)
    _, y = make_classification(100, 5, seed=0, flip_y=0.0)
    # the classes are balanced and the informative features separate them
    assert torch.bincount(torch.as_tensor(y)).tolist() == [34, 33, 33]
    with pytest.raises(LayerLMCError, match="hypercube vertices"):
        make_classification(n_informative=2, n_classes=3, n_clusters_per_class=2)


# -- end to end ---------------------------------------------------------------------------------
@pytest.fixture()
def tiny_pair():
    torch.manual_seed(0)
    model = mlp(**TINY_MODEL)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    b = dict(mlp(**TINY_MODEL).state_dict())
    return model, a, b, classification(**TINY_DATA)


@pytest.fixture()
def trained(tmp_path):
    config = load_config(TrainConfig, {
        "name": "tiny", "epochs": 3, "batch_size": 8, "eval_max_examples": 30, "device": "cpu",
        "model": {"name": "mlp", "args": TINY_MODEL},
        "data": {"name": "classification", "args": TINY_DATA, "run_splits": ["half_a", "half_b"]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    })
    return train_runs(config, tmp_path / "tiny", progress=False)


def _records(folder):
    return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]


def test_zero_sigma_gives_the_clean_networks(tiny_pair):
    model, a, b, data = tiny_pair
    table = subspace(model, a, b, data, sigmas="0,1", per_layer=True, samples=2, plots=False)
    clean = table[table["direction"] == "clean"].set_index("network")
    at_zero = table[(table["direction"] != "clean") & (table["sigma"] == 0)]
    assert set(at_zero["direction"]) == {"span", "nullspace", "average"}
    assert set(at_zero["group"]) == {"full", "fc1", "fc2", "head"}
    for _, row in at_zero.iterrows():
        assert row["loss"] == clean.loc[row["network"], "loss"]
        assert row["accuracy"] == clean.loc[row["network"], "accuracy"]
    moved = table[(table["direction"] != "clean") & (table["sigma"] == 1)]
    assert (moved["loss"] != moved["network"].map(clean["loss"])).all()


def test_cli_on_a_training_run_writes_table_figures_and_resumes(trained, monkeypatch):
    runner = CliRunner()
    args = [str(trained), "--sigma", "0.01:2:4", "--per-layer", "--samples", "2", "--device", "cpu"]
    result = runner.invoke(subspace_command, args)
    assert result.exit_code == 0, result.output
    out = trained / "subspace"
    assert "slope" in result.output and str(out / "subspace.csv") in result.output
    table = pd.read_csv(out / "subspace.csv")
    assert list(table.columns) == ["direction", "network", "group", "sigma", "sample", "split",
                                   "loss", "accuracy"]
    assert set(table["direction"]) == {"clean", "span", "nullspace", "average"}
    assert set(table["split"]) == {"test"}
    # 4 σ × (2 samples of span and nullspace + 1 average) × 2 networks per target, + 2 clean
    assert len(table) == 4 * (2 + 2 + 1) * 2 * 4 + 2
    records = _records(out)
    assert {r["kind"] for r in records} == {"endpoint", "direction"}
    assert all(r["alpha"] is None and r["step"] == 3 and r["unit"] == "epoch"
               for r in records if r["kind"] == "direction")
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"subspace_full.png", "subspace_fc1.png", "subspace_fc2.png",
                       "subspace_head.png"}
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    calls = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate",
                        lambda self, *a: calls.append(1) or original(self, *a))
    assert runner.invoke(subspace_command, [*args, "--no-plots"]).exit_code == 0
    assert calls == []
    assert len(_records(out)) == len(records)
    # other coefficients would mix other directions into the stored records: refused
    result = runner.invoke(subspace_command, [*args, "--no-plots", "--coefficients", "gaussian"])
    assert isinstance(result.exception, LayerLMCError)
    assert "choose another --out" in str(result.exception)


def test_trajectory_span_uses_every_epoch_and_a_killed_run_resumes(trained, tmp_path, monkeypatch):
    a_ckpts = find_checkpoints(trained / "checkpoints" / "a")
    b_ckpts = find_checkpoints(trained / "checkpoints" / "b")
    snapshots = trajectory_snapshots(a_ckpts, b_ckpts)
    assert [p.name for p in snapshots] == ["epoch_0001.safetensors", "epoch_0002.safetensors",
                                           "epoch_0003.safetensors"] * 2
    assert len(trajectory_snapshots(a_ckpts, b_ckpts, every=2, with_init=True)) == 6  # 0, 2, 3
    model, data = mlp(**TINY_MODEL), classification(**TINY_DATA)
    options = {"span": "trajectory", "snapshots": snapshots, "sigmas": "0.1:1:3", "per_layer": True,
               "plots": False, "device": "cpu"}
    clean = subspace(model, a_ckpts[3], b_ckpts[3], data, tmp_path / "clean", **options)
    assert set(clean["direction"]) == {"clean", "trajectory", "nullspace", "average"}

    calls = {"n": 0}
    original = Evaluator.evaluate

    def evaluate_then_die(self, *args):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        subspace(model, a_ckpts[3], b_ckpts[3], data, tmp_path / "killed", **options)
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Evaluator, "evaluate", original)
    resumed = subspace(model, a_ckpts[3], b_ckpts[3], data, tmp_path / "killed", **options)
    pd.testing.assert_frame_equal(resumed, clean)

    def as_set(records):
        return sorted(json.dumps(r, sort_keys=True) for r in records)

    assert as_set(_records(tmp_path / "killed")) == as_set(_records(tmp_path / "clean"))


def test_subspace_command_is_registered(capsys):
    from layerlmc.cli.main import main

    assert main(["subspace", "--help"]) == 0
    assert "null space" in capsys.readouterr().out.lower()
    assert main(["ls", "datasets"]) == 0
    assert "classification" in capsys.readouterr().out
