"""Trajectory heatmaps and distance plots, drawn from synthetic records only (no models)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from layerlmc.core.records import BARRIER_COLUMNS
from layerlmc.plots import trajectory as plots_trajectory
from layerlmc.plots.common import file_name, group_file_name
from layerlmc.plots.trajectory import (
    ColourScale,
    colour_scale,
    largest_single_groups,
    plot_distances,
    plot_trajectory,
)

GROUPS = ["conv1", "block-0", "block-1", "fc"]
STEPS = [0, 2, 4, 6]
ORDERS = {"shallow": GROUPS, "random:0": ["block-1", "fc", "conv1", "block-0"]}
DPI = 30


def _row(step, kind, group, group_index, base, order, split, metric, value, definition="midpoint"):
    return {"step": step, "unit": "epoch", "kind": kind, "group": group,
            "group_index": group_index, "base": base, "order": order, "split": split,
            "metric": metric, "definition": definition, "reference": "models", "value": value}


def _barriers(kinds=("full", "group", "cumulative")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for step in STEPS:
        for split in ("train", "test"):
            for metric in ("loss", "error"):
                scale = 1.0 if metric == "loss" else 0.01
                full = 0.5 * step * scale
                if "full" in kinds:
                    rows.append(_row(step, "full", "full", None, None, None, split, metric, full))
                    rows.append(_row(step, "full", "full", None, None, None, split, metric, 9.0,
                                     definition="max"))  # another definition: never drawn
                for base in ("a", "b"):
                    if "group" in kinds:
                        for i, group in enumerate(GROUPS):
                            rows.append(_row(step, "group", group, i, base, None, split, metric,
                                             rng.normal(0, 0.05) * scale))
                    if "cumulative" in kinds:
                        for order, groups in ORDERS.items():
                            for k, group in enumerate(groups):
                                rows.append(_row(step, "cumulative", group, k, base, order, split,
                                                 metric, full * (k + 1) / len(groups)))
    frame = pd.DataFrame(rows, columns=list(BARRIER_COLUMNS))
    group_b = (frame["kind"] == "group") & (frame["base"] == "b")
    diverged = frame.index[group_b & (frame["step"] == 4)]
    if len(diverged):
        frame.loc[diverged[0], "value"] = math.nan  # a diverged path
    return frame


def _distances() -> pd.DataFrame:
    rows = []
    for step in STEPS:
        for i, group in enumerate(["full"] + GROUPS):
            rows.append({
                "step": step, "unit": "epoch", "group": group,
                "group_index": None if group == "full" else i - 1,
                "l2_ab": step * (2.0 if group == "full" else 0.5 + 0.1 * i),
                "cos_ab": 1 - 0.05 * step,
                "l2_a_init": 0.3 * step, "cos_a_init": 1 - 0.02 * step,
                "l2_b_init": 0.35 * step, "cos_b_init": 1 - 0.03 * step,
            })
    frame = pd.DataFrame(rows)
    frame.loc[3, "cos_ab"] = math.nan
    return frame


def _names(files) -> set[str]:
    return {f.name for f in files}


@pytest.fixture(autouse=True)
def _no_models(monkeypatch):
    """Plotting must never load, build or evaluate a model."""
    import torch

    import layerlmc.analyses.pairwise
    import layerlmc.core.checkpoints
    import layerlmc.evaluate.points

    def refuse(*args, **kwargs):
        raise AssertionError("plots must be drawn from records only")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(layerlmc.core.checkpoints, "load_state_dict", refuse)
    monkeypatch.setattr(layerlmc.analyses.pairwise, "evaluate_paths", refuse)
    monkeypatch.setattr(layerlmc.evaluate.points, "evaluate_paths", refuse)
    yield
    plt.close("all")


def test_every_figure_is_written(tmp_path):
    files = plot_trajectory(_barriers(), _distances(), tmp_path, dpi=DPI)
    expected = set()
    for split in ("train", "test"):
        for metric in ("loss", "error"):
            expected.add(f"layerwise_{split}_{metric}")
            for order in ("shallow", "random-0"):
                expected.add(f"cumulative_{order}_{split}_{metric}")
    expected.add("distances")
    assert _names(files) == {f"{stem}{ext}" for stem in expected for ext in (".png", ".pdf")}
    for path in files:
        assert path.parent == tmp_path and path.stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp.*"))  # atomic writes leave nothing behind
    assert (tmp_path / "layerwise_train_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "layerwise_train_loss.pdf").read_bytes()[:4] == b"%PDF"
    assert not plt.get_fignums()  # every figure closed
    assert "torch" not in vars(plots_trajectory)


def _stub_heatmaps(monkeypatch):
    """Record which heatmaps would be drawn without rendering them (keeps the tests fast)."""

    def names(tables, metric, unit, title, stem, dpi, **style):
        assert not all(t.empty for t in tables.values())
        return [stem.with_name(stem.name + ext) for ext in (".png", ".pdf")]

    monkeypatch.setattr(plots_trajectory, "_heatmaps", names)


def test_missing_kinds_are_skipped(monkeypatch, tmp_path):
    _stub_heatmaps(monkeypatch)
    only_groups = plot_trajectory(_barriers(kinds=("full", "group")), None, tmp_path / "g", dpi=DPI)
    assert _names(only_groups) == {f"layerwise_{s}_{m}{e}" for s in ("train", "test")
                                   for m in ("loss", "error") for e in (".png", ".pdf")}

    only_cumulative = plot_trajectory(_barriers(kinds=("cumulative",)), pd.DataFrame(),
                                      tmp_path / "c", dpi=DPI)
    assert all(name.startswith("cumulative_") for name in _names(only_cumulative))
    assert len(only_cumulative) == 2 * 2 * 2 * 2  # orders × splits × metrics × formats

    # one split and metric only, and a definition that is absent
    frame = _barriers()
    frame = frame[(frame["split"] == "test") & (frame["metric"] == "error")]
    files = plot_trajectory(frame, None, tmp_path / "one", dpi=DPI)
    assert "layerwise_test_error.png" in _names(files)
    assert not any("train" in name or "loss" in name for name in _names(files))
    assert plot_trajectory(frame, None, tmp_path / "none", definition="nope", dpi=DPI) == []
    assert plot_trajectory(pd.DataFrame(columns=list(BARRIER_COLUMNS)), None, tmp_path / "e") == []


def test_only_groups_renders(tmp_path):
    """Layer-wise rows without a full row (and no cumulative rows) still draw, for real."""
    frame = _barriers(kinds=("group",))
    frame = frame[(frame["split"] == "train") & (frame["metric"] == "loss")]
    files = plot_trajectory(frame, None, tmp_path, dpi=DPI)
    assert _names(files) == {"layerwise_train_loss.png", "layerwise_train_loss.pdf"}


def test_distances_alone(tmp_path):
    # without the distances to init, the panels say so instead of failing
    partial = _distances().drop(columns=["l2_a_init", "cos_a_init", "l2_b_init", "cos_b_init"])
    files = plot_distances(partial, tmp_path, dpi=DPI)
    assert _names(files) == {"distances.png", "distances.pdf"}
    assert plot_distances(pd.DataFrame(), tmp_path / "empty") == []


def test_heatmap_tables_follow_the_paper_layout(monkeypatch, tmp_path):
    drawn, styles = {}, {}

    def capture(tables, metric, unit, title, stem, dpi, **style):
        drawn[stem.name] = (tables, metric, unit, title)
        styles[stem.name] = style
        return []

    monkeypatch.setattr(plots_trajectory, "_heatmaps", capture)
    frame = _barriers()
    plot_trajectory(frame, None, tmp_path)
    tables, _metric, unit, title = drawn["layerwise_train_loss"]
    assert unit == "epoch"
    assert title == "train loss: layer-wise barriers (midpoint, reference models)"
    assert list(tables) == ["interpolated into a", "interpolated into b"]
    for base in ("a", "b"):
        panel = tables[f"interpolated into {base}"]
        assert list(panel.index) == ["full"] + GROUPS
        assert list(panel.columns) == [str(s) for s in STEPS]
        # the full row is the same in both panels
        assert list(panel.loc["full"]) == [0.5 * s for s in STEPS]
    tables, _, _, title = drawn["cumulative_random-0_test_error"]
    assert "cumulative averaging starting from random:0 layers" in title
    assert list(tables["interpolated into b"].index) == ["+" + g for g in ORDERS["random:0"]]
    # the NaN cell is kept as NaN, not dropped
    assert sum(t.isna().to_numpy().sum() for d in drawn.values() for t in d[0].values()) == 1


def test_cell_decimals():
    assert plots_trajectory.cell_decimals(np.array([2.3, -0.04, np.nan])) == 1
    assert plots_trajectory.cell_decimals(np.array([0.04, -0.02])) == 2
    assert plots_trajectory.cell_decimals(np.array([0.004, np.nan])) == 3
    assert plots_trajectory.cell_decimals(np.array([0.0, np.nan])) == 1
    assert file_name("random:0") == "random-0"
    assert file_name("list:abcd1234") == "list-abcd1234"
    assert file_name("") == "none" and group_file_name("") == "group"
    assert group_file_name("blocks.0/attn") == "blocks.0-attn"


def test_the_colour_scale_comes_from_the_trained_steps():
    untrained = pd.DataFrame({"0": [2.0, -3.0], "1": [0.1, 0.2], "2": [0.3, -0.05]}, index=["full", "a"])
    scale = colour_scale([untrained], "loss")
    assert scale.limit == pytest.approx(0.3) and scale.saturated == ("0",)
    # step 0 inside the trained range saturates nothing; error is drawn in percentage points
    calm = pd.DataFrame({"0": [0.001], "1": [0.004]}, index=["a"])
    assert colour_scale([calm], "error") == ColourScale(pytest.approx(0.4), ())
    # one step only: it is the scale
    assert colour_scale([pd.DataFrame({"0": [0.5]})], "loss") == ColourScale(0.5, ())
    # two tables compared share one scale
    assert colour_scale([calm, untrained], "loss").limit == pytest.approx(0.3)


def test_the_largest_single_group_barrier_of_each_step_is_found():
    table = pd.DataFrame({"0": [9.0, 0.1, 0.2], "1": [9.0, 0.5, float("nan")],
                          "2": [9.0, float("nan"), float("nan")], "3": [9.0, 0.0, -0.1]},
                         index=["full", "conv1", "fc1"])
    # full is no group; a step with no finite or no positive group barrier has none to box
    assert largest_single_groups(table) == [(2, 0), (1, 1)]


def test_compared_figures_share_one_scale_and_layerwise_ones_are_marked(monkeypatch, tmp_path):
    drawn = {}

    def capture(tables, metric, unit, title, stem, dpi, **style):
        drawn[stem.name] = style
        return []

    monkeypatch.setattr(plots_trajectory, "_heatmaps", capture)
    plot_trajectory(_barriers(), None, tmp_path)
    layerwise, cumulative = drawn["layerwise_test_loss"], drawn["cumulative_shallow_test_loss"]
    assert layerwise["scale"] == cumulative["scale"] and layerwise["mark_largest"]
    assert not cumulative["mark_largest"]
    # each split and metric has a scale of its own
    assert {"layerwise_train_loss", "layerwise_test_error"} <= set(drawn)


def test_a_saturated_untrained_step_is_said_in_the_colour_bar(monkeypatch, tmp_path):
    import matplotlib.figure

    frame = _barriers(kinds=("full", "group"))
    frame = frame[(frame["split"] == "test") & (frame["metric"] == "loss")].copy()
    frame.loc[frame["step"] == 0, "value"] = 50.0  # an untrained pair's barrier
    extends = []
    colorbar = matplotlib.figure.Figure.colorbar

    def spy(self, *args, **kwargs):
        extends.append(kwargs.get("extend"))
        return colorbar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", spy)
    files = plot_trajectory(frame, None, tmp_path, dpi=DPI)
    assert _names(files) == {"layerwise_test_loss.png", "layerwise_test_loss.pdf"}
    assert extends == ["both"]
