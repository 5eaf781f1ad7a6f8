"""Theorem 4.1 (PAPER.md §3): single-layer cuts of deep linear networks are convex, pairs need
not be; the toy example's numbers exactly; the study's files and the ``theory`` commands."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from layerlmc.analyses.theory import (
    DeepLinearPair,
    convexity,
    count_convex,
    curve_convexity,
    cut_losses,
    deep_linear_cuts,
    deep_linear_pair,
    exact_curvature,
    layer_cuts,
    loss_of_output,
    min_curvature,
    mse_polynomial,
    network_output,
    non_convex,
    toy_paths,
)
from layerlmc.analyses.theory.toy import toy_loss
from layerlmc.api import deep_linear_study
from layerlmc.cli.theory import theory_command
from layerlmc.errors import LayerLMCError
from layerlmc.recipes.fig4 import fig4

GRID = np.linspace(0.0, 1.0, 41)
PROPERTY = settings(max_examples=30, deadline=None)


@st.composite
def random_pairs(draw, loss: str) -> DeepLinearPair:
    """Two random endpoints of a random deep linear architecture (depth 2–5, widths 1–6) and
    random data; the weights' scale ranges over two decades so the losses do too."""
    depth = draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    if loss == "ce":
        widths[-1] = max(widths[-1], 2)
    examples = draw(st.integers(1, 8))
    scale = draw(st.floats(0.2, 2.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weights = [[rng.normal(scale=scale, size=(i, o)) for i, o in itertools.pairwise(widths)]
                for _ in range(2)]
    inputs = rng.normal(size=(examples, widths[0]))
    if loss == "ce":
        targets = rng.integers(0, widths[-1], size=examples)
    else:
        targets = rng.normal(size=(examples, widths[-1]))
    return DeepLinearPair(torch.tensor(inputs), torch.tensor(targets), *weights, loss=loss)


# -- the theorem ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_every_single_layer_cut_is_convex(loss):
    @PROPERTY
    @given(random_pairs(loss))
    def check(pair):
        report = convexity(layer_cuts(pair, GRID, pairs=False))
        single = report[report["cut"] == "layer"]
        assert len(single) == 2 * pair.depth
        assert single["convex"].all(), single
        # convex along the cut, so never above the chord between its ends
        assert (single["barrier"] <= 1e-9 * (1 + report["barrier"].abs().max())).all()

    check()


@PROPERTY
@given(random_pairs("mse"))
def test_mse_single_layer_cut_is_a_parabola_with_non_negative_leading_coefficient(pair):
    for layer in range(1, pair.depth + 1):
        for base in ("a", "b"):
            poly = mse_polynomial(pair, [layer], base)
            assert len(poly) == 3
            assert poly[2] >= 0.0  # a mean of squares, exactly
            curve = cut_losses(pair, [layer], base, GRID)
            scale = 1.0 + np.abs(curve).max()
            np.testing.assert_allclose(np.polynomial.polynomial.polyval(GRID, poly), curve,
                                       rtol=1e-9, atol=1e-12 * scale)
            # on a uniform grid a parabola's second differences are all 2·c2·h²
            step = GRID[1] - GRID[0]
            np.testing.assert_allclose(np.diff(curve, 2), 2 * poly[2] * step**2,
                                       rtol=1e-6, atol=1e-9 * scale)
            assert min_curvature(poly) == pytest.approx(2 * poly[2])


@PROPERTY
@given(random_pairs("mse"), st.data())
def test_mse_polynomial_of_any_cut_matches_the_grid(pair, data):
    layers = data.draw(st.lists(st.integers(1, pair.depth), min_size=1, unique=True))
    base = data.draw(st.sampled_from(["a", "b"]))
    poly = mse_polynomial(pair, sorted(layers), base)
    assert len(poly) == 2 * len(layers) + 1
    assert poly[-1] >= 0.0
    curve = cut_losses(pair, sorted(layers), base, GRID)
    np.testing.assert_allclose(np.polynomial.polynomial.polyval(GRID, poly), curve,
                               rtol=1e-8, atol=1e-10 * (1.0 + np.abs(curve).max()))


@PROPERTY
@given(random_pairs("ce"))
def test_cut_ends_are_the_endpoints_and_their_layer_swaps(pair):
    loss_a = float(loss_of_output(network_output(pair.inputs, pair.weights_a), pair.targets, "ce"))
    loss_b = float(loss_of_output(network_output(pair.inputs, pair.weights_b), pair.targets, "ce"))
    table = layer_cuts(pair, [0.0, 0.5, 1.0], pairs=False)
    at = {(r.cut, r.layers, r.base, r.alpha): r.loss for r in table.itertuples()}
    full = "+".join(str(k) for k in range(1, pair.depth + 1))
    assert at[("full", full, None, 0.0)] == pytest.approx(loss_a, rel=1e-12, abs=1e-12)
    assert at[("full", full, None, 1.0)] == pytest.approx(loss_b, rel=1e-12, abs=1e-12)
    for k in range(1, pair.depth + 1):
        assert at[("layer", str(k), "a", 0.0)] == pytest.approx(loss_a, rel=1e-12, abs=1e-12)
        assert at[("layer", str(k), "b", 1.0)] == pytest.approx(loss_b, rel=1e-12, abs=1e-12)


def toy_in_depth_3() -> DeepLinearPair:
    """The toy's two minima as layers 1 and 2 of a depth-3 network whose third layer is 1."""
    one = torch.ones(1, 1, dtype=torch.float64)
    return DeepLinearPair(one, one, [one * 0.5, one * 2.0, one], [one * 2.0, one * 0.5, one])


def test_a_pair_cut_can_be_non_convex():
    pair = toy_in_depth_3()
    report = convexity(layer_cuts(pair, "0:1:101"))
    row = report[(report["layers"] == "1+2") & (report["base"] == "a")].iloc[0]
    assert row["cut"] == "pair"
    assert not row["convex"]
    assert row["barrier"] == 0.31640625  # (2.25·½·½)², exactly, at α=½
    assert row["min_second_difference"] < 0
    assert ("pair", "1+2") in {(r.cut, r.layers) for r in non_convex(report).itertuples()}
    assert report[report["cut"] == "layer"]["convex"].all()
    exact = exact_curvature(pair)
    pair_row = exact[(exact["layers"] == "1+2") & (exact["base"] == "a")].iloc[0]
    assert pair_row["min_curvature"] == pytest.approx(-5.0625)  # L''(½) of 5.0625·α²(1−α)²
    assert (exact[exact["cut"] == "layer"]["min_curvature"] >= 0).all()


def test_curve_convexity_basic_curves():
    alphas = np.linspace(0, 1, 11)
    assert curve_convexity(alphas, 3 - 2 * alphas) == (True, pytest.approx(0.0, abs=1e-12),
                                                       pytest.approx(0.0, abs=1e-12))
    convex, second, barrier = curve_convexity(alphas, np.sin(np.pi * alphas))
    assert not convex and second < 0 and barrier == pytest.approx(1.0)
    convex, second, barrier = curve_convexity(alphas, (alphas - 0.3) ** 2)
    assert convex and second == pytest.approx(2 * 0.1**2) and barrier <= 1e-15
    # an uneven grid: the second difference is the slope change times the mean step
    assert curve_convexity([0.0, 0.2, 1.0], [0.0, 0.04, 1.0])[0]
    assert curve_convexity([0.0, 1.0, 0.5], [0.0, 0.0, 1.0])[0] is False  # order does not matter
    with pytest.raises(LayerLMCError, match="at least 3 alphas"):
        curve_convexity([0.0, 1.0], [0.0, 1.0])
    convex, _, barrier = curve_convexity(alphas, np.where(alphas > 0.5, np.inf, 0.0))
    assert not convex and barrier == np.inf


def test_identical_endpoints_give_flat_convex_cuts():
    pair = deep_linear_pair(3, 3, "ce", examples=16, steps=5, seed=2, same_init=True)
    same = DeepLinearPair(pair.inputs, pair.targets, pair.weights_a, pair.weights_a, "ce")
    report = convexity(layer_cuts(same, "0:1:11"))
    assert report["convex"].all()
    assert np.allclose(report["barrier"], 0.0, atol=1e-15)


# -- trained pairs and the study --------------------------------------------------------------


def test_trained_cuts_are_seeded_and_tidy():
    first = deep_linear_cuts(3, 3, "mse", examples=32, steps=40, seed=7, alphas="0:1:11")
    again = deep_linear_cuts(3, 3, "mse", examples=32, steps=40, seed=7, alphas="0:1:11")
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == ["cut", "layers", "base", "alpha", "loss"]
    # 3 layers × 2 bases, 3 pairs × 2 bases, the full path; 11 alphas each
    assert len(first) == (6 + 6 + 1) * 11
    assert first["loss"].dtype == np.float64
    other = deep_linear_cuts(3, 3, "mse", examples=32, steps=40, seed=8, alphas="0:1:11")
    assert not np.allclose(first["loss"], other["loss"])


def test_training_reaches_the_noise_floor():
    pair = deep_linear_pair(3, 4, "mse", examples=128, steps=600, seed=0)
    for weights in (pair.weights_a, pair.weights_b):
        loss = float(loss_of_output(network_output(pair.inputs, weights), pair.targets, "mse"))
        assert loss < 0.02  # noise variance 0.01
    assert not torch.allclose(pair.weights_a[0], pair.weights_b[0])


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_study_writes_its_run_folder(tmp_path, loss):
    out = tmp_path / "study"
    plots = loss == "mse"  # drawing takes most of the time; once is enough
    curves, report = deep_linear_study(out, depth=3, width=3, loss=loss, examples=48, steps=60,
                                       seed=1, alphas="0:1:21", plots=plots)
    for name in ("cuts.csv", "convexity.csv", "config.yaml", "run.json"):
        assert (out / name).is_file(), name
    for name in ("figures/deep_linear_cuts.png", "figures/deep_linear_cuts.pdf"):
        assert (out / name).is_file() == plots, name
    assert '"status": "complete"' in (out / "run.json").read_text()
    stored = pd.read_csv(out / "convexity.csv")
    assert list(stored.columns[:6]) == ["cut", "layers", "base", "convex",
                                        "min_second_difference", "barrier"]
    assert ("min_curvature" in stored) == (loss == "mse")
    assert len(pd.read_csv(out / "cuts.csv")) == len(curves) == 13 * 21
    assert count_convex(report)["layer"] == (6, 6)
    if loss == "mse":
        single = report[report["cut"] == "layer"]
        assert (single["leading_coefficient"] >= 0).all()
        assert (single["min_curvature"] >= 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, "depth must be a positive integer"),
    ({"width": -2}, "width must be a positive integer"),
    ({"examples": 0}, "examples must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"alphas": "0,1"}, "at least 3 alphas"),
    ({"alphas": "0:2:5"}, "outside"),
    ({"loss": "ce", "width": 1}, "at least 2 classes"),
])
def test_study_refuses_bad_sizes_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "bad"
    with pytest.raises(LayerLMCError, match=message):
        deep_linear_study(out, **{"depth": 2, "width": 2, "steps": 1, **kwargs})
    assert not (out / "run.json").exists()


# -- the toy example (Figure 4) ---------------------------------------------------------------


def test_fig4_numbers_are_exact_and_files_written(tmp_path):
    summary = fig4(tmp_path / "toy")
    rows = summary.set_index("path")
    assert rows.loc["full", "loss_at_half"] == 0.31640625
    assert rows.loc["w2", "loss_at_half"] == 0.140625
    assert rows.loc["w1", "loss_at_half"] == 2.25
    assert rows.loc["w2", "loss_at_1"] == 0.5625
    assert rows.loc["w1", "loss_at_1"] == 9.0
    assert rows.loc["full", "loss_at_1"] == 0.0
    assert rows.loc["full", "barrier"] == 0.31640625
    assert rows["convex"].to_dict() == {"full": False, "w1": True, "w2": True}
    assert rows.loc["w1", "min_curvature"] == pytest.approx(18.0)  # (3α)²
    assert rows.loc["w2", "min_curvature"] == pytest.approx(1.125)  # (0.75α)²
    for name in ("paths.csv", "summary.csv", "figures/fig4.png", "figures/fig4.pdf", "run.json"):
        assert (tmp_path / "toy" / name).is_file(), name
    paths = pd.read_csv(tmp_path / "toy" / "paths.csv")
    assert list(paths.columns) == ["path", "alpha", "w1", "w2", "loss"]
    assert set(paths["path"]) == {"full", "w1", "w2"}
    np.testing.assert_array_equal(paths["loss"], toy_loss(paths["w1"], paths["w2"]))
    stored = pd.read_csv(tmp_path / "toy" / "summary.csv").set_index("path")
    assert stored.loc["full", "loss_at_half"] == 0.31640625


def test_toy_paths_are_the_closed_forms():
    paths = toy_paths()
    for name, formula in (("full", lambda a: (2.25 * a * (1 - a)) ** 2),
                          ("w2", lambda a: (0.75 * a) ** 2), ("w1", lambda a: (3 * a) ** 2)):
        curve = paths[paths["path"] == name]
        np.testing.assert_allclose(curve["loss"], formula(curve["alpha"]), atol=1e-13)


# -- the command ------------------------------------------------------------------------------


def test_cli_deep_linear_end_to_end(tmp_path):
    out = tmp_path / "dl"
    result = CliRunner().invoke(theory_command, [
        "deep-linear", "--depth", "3", "--width", "3", "--loss", "ce", "--examples", "40",
        "--steps", "30", "--alphas", "0:1:21", "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "single-layer cuts:  6/6 convex" in result.output
    assert str(out / "convexity.csv") in result.output
    table = pd.read_csv(out / "convexity.csv")
    assert table[table["cut"] == "layer"]["convex"].all()


def test_cli_toy(tmp_path):
    result = CliRunner().invoke(theory_command, ["toy", "--out", str(tmp_path / "toy"),
                                                 "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "0.3164" in result.output and "0.1406" in result.output and "2.25" in result.output
    assert (tmp_path / "toy" / "summary.csv").is_file()
    assert not (tmp_path / "toy" / "figures" / "fig4.png").exists()


@pytest.mark.parametrize("option", ["--depth", "--width", "--examples", "--steps"])
def test_cli_refuses_non_positive_sizes(tmp_path, option):
    result = CliRunner().invoke(theory_command, ["deep-linear", option, "0",
                                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert option in result.output and "x>=1" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_bad_alpha_grid_is_a_user_error(tmp_path):
    result = CliRunner().invoke(theory_command, ["deep-linear", "--alphas", "0,1",
                                                 "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, LayerLMCError)
    assert "at least 3 alphas" in str(result.exception)


def test_pair_validates_shapes():
    one = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(LayerLMCError, match="do not chain"):
        DeepLinearPair(one, one, [torch.ones(1, 3), torch.ones(2, 1)],
                       [torch.ones(1, 3), torch.ones(2, 1)])
    with pytest.raises(LayerLMCError, match="targets must have shape"):
        DeepLinearPair(one, torch.ones(2, 2), [torch.ones(1, 1)], [torch.ones(1, 1)])
    with pytest.raises(LayerLMCError, match="class indices"):
        DeepLinearPair(one, torch.tensor([0, 2]), [torch.ones(1, 2)], [torch.ones(1, 2)], "ce")


def test_reproduce_fig4_and_theory_through_the_main_command(tmp_path, capsys):
    from layerlmc.cli.main import main

    assert main(["reproduce", "fig4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "0.316406" in printed and "2.250000" in printed and "0.140625" in printed
    assert (tmp_path / "fig4" / "figures" / "fig4.png").is_file()
    assert main(["theory", "deep-linear", "--depth", "0"]) == 2
    assert "see 'layerlmc theory deep-linear --help'" in capsys.readouterr().err
