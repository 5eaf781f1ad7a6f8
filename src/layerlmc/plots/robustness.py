"""Robustness figures (PAPER.md §4.1), drawn from ``robustness.csv`` only (no model needed).

- ``heatmap_{split}_{metric}`` (PNG and PDF): the paper's side-by-side heatmaps of raw values,
  colormap "Blues", one colour scale for all panels; one row of panels per base. Left: each
  group moved a step fraction ``at`` towards the other model (averaging direction); right: the
  same step along random directions of the same norm (mean over samples). Heatmap rows:
  ``full`` (the base model itself), then the groups input → output; columns: steps.
- ``curves_{split}_{metric}`` (PNG; loss by default): one panel per group, the metric against
  the step fraction at one step (default: the last) for both directions (random: mean ± std
  band) and both bases (a solid, b dashed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analyses.robustness import DIRECTIONS, base_values, metric_values
from .common import file_name, save_figure, save_png_pdf, step_key, step_label, unit_of

CMAP = "Blues"
METRICS = ("loss", "error")
LABEL = {"loss": "loss (cross-entropy)", "error": "error (%)"}
SCALE = {"loss": 1.0, "error": 100.0}  # error is stored as a fraction, shown in percent
COLOR = {"average": "tab:red", "random": "tab:blue"}
STYLE = {"a": "-", "b": "--"}
DPI = 150

_ROW_H = 0.3
_COL_W = 0.55


def plot_robustness(table: pd.DataFrame, out: Path, at: float = 0.5, *, step: int | None = None,
                    curve_metrics: Sequence[str] = ("loss",), dpi: int = DPI) -> list[Path]:
    """Every robustness figure ``table`` (the ``robustness.csv`` rows) supports; returns the
    files written. ``at`` is the step fraction of the heatmaps; ``step`` that of the curves."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if table is None or table.empty:
        return []
    table = _numeric(table)
    files: list[Path] = []
    for split in dict.fromkeys(table["split"]):
        rows = table[table["split"] == split]
        for metric in METRICS:
            files += plot_heatmaps(rows, metric, at, out / f"heatmap_{file_name(split)}_{metric}",
                                   dpi=dpi)
        for metric in curve_metrics:
            files += plot_curves(rows, metric, out / f"curves_{file_name(split)}_{metric}", step=step,
                                 dpi=dpi)
    return files


def plot_heatmaps(rows: pd.DataFrame, metric: str, at: float, stem: Path, *,
                  dpi: int = DPI) -> list[Path]:
    """Averaging-direction and random-direction heatmaps of one split, a row per base."""
    rows = _numeric(rows)
    at_rows = rows[(rows["step_fraction"] - at).abs() < 1e-9]
    if at_rows.empty:
        return []
    bases = sorted(set(at_rows["base"]))
    full = base_values(rows, metric)
    panels: dict[tuple[str, str], pd.DataFrame] = {}
    for base in bases:
        for direction in DIRECTIONS:
            mine = at_rows[(at_rows["base"] == base) & (at_rows["direction"] == direction)]
            values = pd.DataFrame({"group": mine["group"], "rank": mine["group_index"],
                                   "step": mine["step"], "value": metric_values(mine, metric)[0]})
            own = full[full["base"] == base].assign(group="full", rank=-1.0)
            panels[(base, direction)] = pd.concat([own[["group", "rank", "step", "value"]], values])
    grids, names, cols = _grids(panels)
    grids = {key: SCALE[metric] * grid for key, grid in grids.items()}
    every = np.concatenate([g.ravel() for g in grids.values()])
    finite = every[np.isfinite(every)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = matplotlib.colors.Normalize(vmin=low, vmax=high if high > low else low + 1.0)
    cmap = plt.get_cmap(CMAP).with_extremes(bad="lightgrey")
    decimals = 1 if metric == "error" or (finite.size and np.abs(finite).max() >= 10) else 2

    samples = at_rows.loc[at_rows["direction"] == "random", "samples"]
    n = int(samples.max()) if len(samples) else 0
    xlabel = unit_of(rows) if rows["step"].notna().any() else "single pair"
    label_w = 0.075 * max(len(str(r)) for r in names) + 0.4
    width = max(9.0, min(60.0, label_w + 2 * _COL_W * len(cols) + 2.4))
    height = min(60.0, len(bases) * (_ROW_H * len(names) + 1.1) + 0.8)
    fig, axes = plt.subplots(len(bases), 2, figsize=(width, height), sharey=True, squeeze=False,
                             constrained_layout=True)
    image = None
    for line, base in zip(axes, bases):
        other = "b" if base == "a" else "a"
        titles = {"average": f"base {base}: averaging direction (towards {other})",
                  "random": f"base {base}: random directions, same norm (mean of {n})"}
        for ax, direction in zip(line, DIRECTIONS):
            grid = grids[(base, direction)]
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto",
                              interpolation="nearest")
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    value = grid[i, j]
                    text = f"{value:.{decimals}f}" if np.isfinite(value) else "nan"
                    colour = "white" if np.isfinite(value) and norm(value) > 0.6 else "black"
                    # cell texts stay inside their cells: keep them out of the layout engine
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color=colour).set_in_layout(False)
            ax.set_xticks(range(len(cols)), cols, fontsize=9)
            ax.set_yticks(range(len(names)), names, fontsize=9)
            ax.tick_params(length=0)
            ax.set_xlabel(xlabel)
            ax.set_title(titles[direction], fontsize=10)
            for spine in ax.spines.values():
                spine.set_visible(False)
    colorbar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.05, pad=0.02)
    colorbar.set_label(LABEL[metric])
    split = str(rows["split"].iloc[0])
    fig.suptitle(f"{split} {metric}: one group moved {at:g} of the way from the base "
                 "(row 'full' = the base model)", fontsize=11)
    return save_png_pdf(fig, stem, dpi)


def plot_curves(rows: pd.DataFrame, metric: str, stem: Path, *, step: int | None = None,
                dpi: int = DPI) -> list[Path]:
    """One panel per group: ``metric`` vs step fraction for both directions (random: mean ±
    std band) and both bases, at ``step`` (default: the last one)."""
    rows = _numeric(rows)
    steps = rows["step"].dropna()
    if step is None and not steps.empty:
        step = int(steps.max())
    rows = rows[rows["step"] == step] if step is not None else rows[rows["step"].isna()]
    if rows.empty:
        return []
    mean, std = metric_values(rows, metric)
    rows = rows.assign(_mean=mean * SCALE[metric], _std=std * SCALE[metric])
    groups = list(dict.fromkeys(rows.sort_values("group_index", kind="stable")["group"]))
    columns = min(4, len(groups))
    lines = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, min(60.0, 2.4 * lines + 1.0)),
                             squeeze=False, sharex=True, constrained_layout=True)
    for ax, group in zip(axes.ravel(), groups):
        mine = rows[rows["group"] == group]
        for base in sorted(set(mine["base"])):
            for direction in DIRECTIONS:
                curve = mine[(mine["base"] == base) & (mine["direction"] == direction)]
                curve = curve.sort_values("step_fraction")
                if curve.empty:
                    continue
                x, y = curve["step_fraction"].to_numpy(float), curve["_mean"].to_numpy(float)
                what = "averaging" if direction == "average" else (
                    f"random, mean ± std of {int(curve['samples'].max())}")
                # the averaging curve on top: where both coincide (d = 0) it stays visible
                ax.plot(x, y, marker=".", color=COLOR[direction], linestyle=STYLE.get(base, ":"),
                        label=f"base {base}: {what}", zorder=3 if direction == "average" else 2)
                if direction == "random":
                    spread = np.nan_to_num(curve["_std"].to_numpy(float))
                    ax.fill_between(x, y - spread, y + spread, color=COLOR[direction],
                                    alpha=0.15, linewidth=0)
        ax.set_title(group, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step fraction from the base")
    for ax in axes[:, 0]:
        ax.set_ylabel(LABEL[metric])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    split = str(rows["split"].iloc[0])
    where = f"{unit_of(rows)} {step}" if step is not None else "single pair"
    fig.suptitle(f"{split} {metric}, {where}: one group moved at a time", fontsize=11)
    try:
        return [save_figure(fig, stem.with_name(stem.name + ".png"), dpi)]
    finally:
        plt.close(fig)


def _numeric(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(
        step=pd.to_numeric(table["step"], errors="coerce"),
        group_index=pd.to_numeric(table["group_index"], errors="coerce"),
        step_fraction=pd.to_numeric(table["step_fraction"], errors="coerce"),
    )


def _grids(panels: dict[tuple, pd.DataFrame]) -> tuple[dict[tuple, np.ndarray], list, list]:
    """Each panel as rows × steps on the union of rows (by rank) and steps."""
    every = pd.concat(panels.values())
    ranks = every.groupby("group", sort=False)["rank"].min().sort_values(kind="stable")
    order = list(ranks.index)
    labelled = {key: p.assign(_col=p["step"].map(step_label)) for key, p in panels.items()}
    cols = sorted(set(pd.concat(labelled.values())["_col"]), key=step_key)
    grids = {}
    for key, frame in labelled.items():
        frame = frame.drop_duplicates(["group", "_col"], keep="last")
        pivot = frame.pivot(index="group", columns="_col", values="value")
        grids[key] = pivot.reindex(index=order, columns=cols).to_numpy(dtype=float)
    return grids, order, cols
