"""Figures drawn from records only (never from models)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.barriers import (  # noqa: E402
    SWAP_KINDS,
    SWAP_REFERENCE,
    reference_label,
    row_reference,
    select_barriers,
)
from .common import save_png  # noqa: E402

METRIC_LABEL = {"loss": "loss (cross-entropy)", "error": "error (%)"}
BASE_COLOR = {"a": "tab:blue", "b": "tab:orange"}


def _metric(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame["loss"] if metric == "loss" else 100.0 * (1.0 - frame["accuracy"])


def plot_full_path(points: pd.DataFrame, out: Path) -> Path | None:
    """Loss and error along the full path, per split, with the endpoints marked."""
    full = points[points["kind"] == "full"]
    if full.empty:
        return None
    ends = points[points["kind"] == "endpoint"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "error")):
        for split, curve in full.groupby("split", sort=False):
            curve = curve.sort_values("alpha")
            (line,) = ax.plot(curve["alpha"], _metric(curve, metric), marker=".", label=f"{split}")
            end = ends[ends["split"] == split].sort_values("alpha")
            ax.scatter(end["alpha"], _metric(end, metric), color=line.get_color(), s=60, zorder=3,
                       edgecolor="black")
        ax.set_xlabel("alpha (0 = a, 1 = b)")
        ax.set_ylabel(METRIC_LABEL[metric])
        ax.grid(alpha=0.3)
        ax.legend(title="split")
    fig.suptitle("full-network interpolation")
    return save_png(fig, out / "full_path.png")


def plot_layer_barriers(barriers: pd.DataFrame, out: Path, definition: str, reference: str) -> Path | None:
    """Per-group barriers for both bases, one panel per split × metric, the full barrier dashed."""
    chosen, groups = _rows(barriers, definition, reference, "group")
    if groups.empty:
        return None
    names = list(dict.fromkeys(groups.sort_values("group_index")["group"]))
    bases = sorted(groups["base"].unique())
    x = np.arange(len(names))
    width = 0.8 / len(bases)
    fig, panels = _panels(groups, width=max(8, 0.55 * len(names) * 2 + 3), height=3.2)
    for ax, panel, split, metric, scale in panels:
        for i, base in enumerate(bases):
            values = panel[panel["base"] == base].set_index("group")["value"].reindex(names)
            ax.bar(x + (i - (len(bases) - 1) / 2) * width, scale * values.to_numpy(float), width,
                   label=f"base {base}", color=BASE_COLOR.get(base))
        full = chosen[(chosen["kind"] == "full") & (chosen["split"] == split) & (chosen["metric"] == metric)]
        if not full.empty:
            ax.axhline(scale * full["value"].iloc[0], color="crimson", linestyle="--", label="full network")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=8)
    fig.suptitle(f"layer-wise barriers ({definition}, reference: {reference_label(definition, reference)})")
    return save_png(fig, out / "layer_barriers.png")


def plot_cumulative(barriers: pd.DataFrame, out: Path, definition: str, reference: str) -> Path | None:
    """Barrier as the averaged set grows, one line per order and base."""
    _, cumulative = _rows(barriers, definition, reference, "cumulative")
    if cumulative.empty:
        return None
    styles = {"a": "-", "b": "--"}
    fig, panels = _panels(cumulative, width=11, height=3.4)
    for ax, panel, _, _, scale in panels:
        for (order, base), line in panel.groupby(["order", "base"], sort=False):
            line = line.sort_values("group_index")
            ax.plot(line["group_index"] + 1, scale * line["value"], marker="o",
                    linestyle=styles.get(base, "-"), label=f"{order}, base {base}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("groups averaged (prefix length; window: start + 1)")
        ax.legend(fontsize=8)
    fig.suptitle(f"cumulative averaging ({definition}, reference: "
                 f"{row_reference(definition, reference, 'cumulative')})")
    return save_png(fig, out / "cumulative_barriers.png")


def _rows(barriers: pd.DataFrame, definition: str, reference: str, kind: str):
    """The barriers of one definition and reference, and those of them of one path kind."""
    chosen = select_barriers(barriers, definition, reference)
    return chosen, chosen[chosen["kind"] == kind]


def _panels(rows: pd.DataFrame, width: float, height: float):
    """A figure with one row per split and a loss and an error column; yields each panel's
    axes, rows, split, metric and the factor that shows error in percentage points."""
    splits = list(dict.fromkeys(rows["split"]))
    fig, axes = plt.subplots(len(splits), 2, figsize=(width, height * len(splits)), squeeze=False,
                             constrained_layout=True)

    def panels():
        for row, split in enumerate(splits):
            for col, metric in enumerate(("loss", "error")):
                ax = axes[row][col]
                ax.axhline(0, color="black", linewidth=0.8)
                ax.set_title(f"{split} {metric} barrier")
                ax.set_ylabel("loss barrier (nats)" if metric == "loss" else "error barrier (pp)")
                ax.grid(alpha=0.3)
                panel = rows[(rows["split"] == split) & (rows["metric"] == metric)]
                yield ax, panel, split, metric, (100.0 if metric == "error" else 1.0)

    return fig, panels()


def plot_run(points: pd.DataFrame, barriers: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure the records support; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if barriers.empty:
        return [p for p in [plot_full_path(points, out)] if p]
    definition = "midpoint" if "midpoint" in set(barriers["definition"]) else barriers["definition"].iloc[0]
    reference = "models" if "models" in set(barriers["reference"]) else barriers["reference"].iloc[0]
    layers = barriers["kind"].isin(SWAP_KINDS)
    if reference == "models" and not select_barriers(barriers[layers], definition, "models").size:
        # models-swap runs, and folders from before, hold the max of group paths under models
        reference = SWAP_REFERENCE if select_barriers(barriers[layers], definition, SWAP_REFERENCE).size else reference
    files = [
        plot_full_path(points, out),
        plot_layer_barriers(barriers, out, definition, reference),
        plot_cumulative(barriers, out, definition, reference),
    ]
    return [f for f in files if f is not None]


