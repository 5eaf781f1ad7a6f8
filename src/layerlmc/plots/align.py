"""Barriers before and after aligning b to a (``layerlmc reproduce align``), side by side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import save_png


def plot_alignment(rows_by_model: Mapping[str, pd.DataFrame], path: Path,
                   metric: str = "loss") -> Path:
    """Per model (one row of panels): the full and layer-wise barriers (base a) before and
    after alignment as paired bars, and the cumulative (shallow) barriers as two lines."""
    models = list(rows_by_model)
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 3.6 * len(models)), squeeze=False)
    for row, name in enumerate(models):
        rows = rows_by_model[name]
        layer = rows[(rows.kind == "full") | ((rows.kind == "group") & (rows.base == "a"))]
        positions = np.arange(len(layer))
        ax = axes[row][0]
        series = [("before", "unaligned", "tab:red"), ("after", "weight matching", "tab:blue")]
        if "activation" in rows:
            series.append(("activation", "activation matching", "tab:green"))
        width = 0.8 / len(series)
        for i, (column, label, color) in enumerate(series):
            ax.bar(positions + (i - (len(series) - 1) / 2) * width, layer[column], width,
                   label=label, color=color)
        ax.set_xticks(positions, [g if k != "full" else "FULL" for g, k in zip(layer["group"], layer["kind"])],
                      rotation=60, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(f"{metric} barrier (midpoint)")
        ax.set_title(f"{name}: full and layer-wise (others from a)")
        ax.legend(fontsize=8)
        ax = axes[row][1]
        cumulative = rows[(rows.kind == "cumulative") & (rows.order == "shallow") & (rows.base == "a")]
        if len(cumulative):
            steps = np.arange(1, len(cumulative) + 1)
            for column, label, color in series:
                ax.plot(steps, cumulative[column], "o-", color=color, label=label)
            ax.set_xticks(steps, cumulative["group"], rotation=60, ha="right", fontsize=8)
            ax.legend(fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"{name}: cumulative from the input\n(up to the group named; others from a)")
    fig.tight_layout()
    return save_png(fig, Path(path))
