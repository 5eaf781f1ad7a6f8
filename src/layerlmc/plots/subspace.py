"""Figures of the subspace-noise analysis, drawn from ``subspace.csv`` alone.

One scatter per target (the full network, then each layer group) and split, as in the paper's
notebooks: loss vs σ, colour = direction type (span or trajectory, null space, averaging
direction), marker = network (a: filled circle, b: open triangle), the clean losses of both
networks as horizontal lines.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import group_file_name, save_figure

DIRECTION_STYLE = {
    "span": ("tab:green", "span of the final weights"),
    "trajectory": ("tab:green", "training-trajectory span"),
    "nullspace": ("tab:purple", "null space"),
    "average": ("tab:red", "averaging direction"),
}
NETWORK_MARKER = {"a": ("o", True), "b": ("^", False)}
CLEAN_STYLE = {"a": "-", "b": "--"}
DPI = 150
#: Use a log loss axis when the largest finite loss exceeds the clean losses this many times.
LOG_RATIO = 20.0


def plot_subspace(table: pd.DataFrame, out: Path, *, dpi: int = DPI) -> list[Path]:
    """``subspace_<target>.png`` for every target of ``table`` (``subspace_full.png``, then one per
    group) on the main split (``test`` when present), ``subspace_<target>_<split>.png`` for the
    other splits. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if table.empty:
        return []
    splits = list(dict.fromkeys(table["split"]))
    main = "test" if "test" in splits else splits[0]
    moved = table[table["direction"] != "clean"]
    files = []
    for split in splits:
        rows = table[table["split"] == split]
        clean = rows[rows["direction"] == "clean"].set_index("network")["loss"]
        for group in dict.fromkeys(moved["group"]):
            points = rows[(rows["group"] == group) & (rows["direction"] != "clean")]
            if points.empty:
                continue
            suffix = "" if split == main else f"_{group_file_name(split)}"
            name = f"subspace_{group_file_name(group)}{suffix}"
            files.append(_scatter(points, clean, group, split, out / f"{name}.png", dpi))
    return files


def _scatter(
    points: pd.DataFrame, clean: pd.Series, group: str, split: str, path: Path, dpi: int,
) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    finite = points[np.isfinite(points["loss"])]
    diverged = len(points) - len(finite)
    for direction, (color, label) in DIRECTION_STYLE.items():
        for network, (marker, filled) in NETWORK_MARKER.items():
            part = finite[(finite["direction"] == direction) & (finite["network"] == network)]
            if part.empty:
                continue
            ax.scatter(part["sigma"], part["loss"], s=16, marker=marker, alpha=0.75,
                       color=color if filled else "none", edgecolors=color, linewidths=0.9,
                       label=f"{label}, network {network}")
    for network, style in CLEAN_STYLE.items():
        if network in clean.index and math.isfinite(clean[network]):
            ax.axhline(clean[network], color="black", linestyle=style, linewidth=1.0,
                       label=f"clean network {network} ({clean[network]:.3f})")
    reference = float(np.nanmin(clean.to_numpy(float))) if len(clean) else float("nan")
    if (len(finite) and math.isfinite(reference) and reference > 0
            and finite["loss"].max() > LOG_RATIO * reference):
        ax.set_yscale("log")
    ax.set_xlabel("σ (norm of the perturbation)")
    ax.set_ylabel(f"{split} loss (cross-entropy)")
    where = "full network" if group == "full" else f"layer group {group}"
    note = f"; {diverged} diverged points not shown" if diverged else ""
    ax.set_title(f"{split} loss under noise along unit directions: {where}{note}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    try:
        return save_figure(fig, path, dpi)
    finally:
        plt.close(fig)
