"""Figures of the theory studies (PAPER.md §3), drawn from their tables only.

``plot_cuts`` draws the loss along every cut of a deep linear network (``cuts.csv``):
single-layer cuts in one column, pair cuts in the other, one row per base, the full path thick
and black in every panel. ``plot_toy`` draws the paper's Figure 4 from the toy's ``paths.csv``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .common import save_png_pdf

DPI = 150
#: Path colours of the toy figure (the same in both panels).
TOY_COLORS = {"full": "black", "w1": "tab:red", "w2": "tab:blue"}
TOY_LABELS = {"full": "full path (w1 and w2)", "w1": "w1 only (w2 from A)",
              "w2": "w2 only (w1 from A)"}


def plot_cuts(
    curves: pd.DataFrame, report: pd.DataFrame | None, stem: Path, *, title: str | None = None,
    dpi: int = DPI,
) -> list[Path]:
    """``stem.png``/``.pdf``: loss vs α along each cut of a ``layer_cuts`` table.

    Rows: base a, base b; columns: single-layer cuts, pair cuts; the full path (which has no
    base) in every panel. A cut the ``report`` (``convexity`` table) marks not convex is drawn
    dashed and labelled so. The loss axis stays linear: convexity is what the figure shows.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    flags = {}
    if report is not None and not report.empty:
        for row in report.itertuples(index=False):
            flags[(row.cut, str(row.layers), _base(row.base))] = bool(row.convex)
    frame = curves.assign(base=curves["base"].map(_base), layers=curves["layers"].astype(str))
    full = frame[frame["cut"] == "full"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, constrained_layout=True)
    for row, base in enumerate(("a", "b")):
        for col, cut in enumerate(("layer", "pair")):
            ax = axes[row][col]
            rows = frame[(frame["cut"] == cut) & (frame["base"] == base)]
            names = list(dict.fromkeys(rows["layers"]))
            cmap = plt.get_cmap("viridis" if cut == "layer" else "plasma")
            for i, name in enumerate(names):
                curve = rows[rows["layers"] == name].sort_values("alpha")
                convex = flags.get((cut, name, base), True)
                label = "W" + name.replace("+", "+W")
                ax.plot(curve["alpha"], curve["loss"], color=cmap(i / max(1, len(names) - 1) * 0.9),
                        linestyle="-" if convex else "--", linewidth=1.3,
                        label=label if convex else f"{label} (not convex)")
            for name in dict.fromkeys(full["layers"]):
                curve = full[full["layers"] == name].sort_values("alpha")
                convex = flags.get(("full", name, None), True)
                ax.plot(curve["alpha"], curve["loss"], color="black", linewidth=2.6, zorder=5,
                        label="full path" + ("" if convex else " (not convex)"))
            if cut == "pair" and not names:
                ax.text(0.5, 0.6, "no pair besides the full path (depth 2)",
                        transform=ax.transAxes, ha="center", color="grey")
            kind = "single-layer cuts" if cut == "layer" else "pair cuts"
            ax.set_title(f"{kind}, other layers from {base}", fontsize=10)
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2 if len(names) > 6 else 1, loc="best")
    for ax in axes[1]:
        ax.set_xlabel("α (0 = a, 1 = b)")
    fig.suptitle(title or "loss along layer cuts of a deep linear network")
    return save_png_pdf(fig, stem, dpi)


def plot_toy(
    paths: pd.DataFrame, stem: Path, *, a: tuple[float, float], b: tuple[float, float],
    dpi: int = DPI,
) -> list[Path]:
    """``stem.png``/``.pdf``: the toy's loss surface with its paths (left) and loss vs α (right).

    ``paths`` is the toy's ``paths.csv`` (``path, alpha, w1, w2, loss``).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.8), constrained_layout=True)

    top = max(paths["w1"].max(), paths["w2"].max()) * 1.25
    w1, w2 = np.meshgrid(np.linspace(0.0, top, 300), np.linspace(0.0, top, 300))
    floor = 1e-3  # the loss is 0 on the hyperbola; a log scale needs a floor
    surface = np.clip((w1 * w2 - 1.0) ** 2, floor, None)
    levels = np.logspace(np.log10(floor), np.log10(surface.max()), 25)
    filled = left.contourf(w1, w2, surface, levels=levels, cmap="viridis",
                           norm=matplotlib.colors.LogNorm(vmin=floor, vmax=surface.max()))
    fig.colorbar(filled, ax=left, label="loss (w1·w2 − 1)², log scale",
                 ticks=[1e-3, 1e-2, 1e-1, 1, 10, 100])
    hyper = np.linspace(1.0 / top, top, 400)
    left.plot(hyper, 1.0 / hyper, color="white", linestyle="--", linewidth=1.4,
              label="minima w1·w2 = 1")
    for name, curve in paths.groupby("path", sort=False):
        curve = curve.sort_values("alpha")
        left.plot(curve["w1"], curve["w2"], color=TOY_COLORS.get(name, "grey"), linewidth=2.2,
                  label=TOY_LABELS.get(name, name))
        mid = curve.iloc[(curve["alpha"] - 0.5).abs().argmin()]
        left.plot(mid["w1"], mid["w2"], "o", color=TOY_COLORS.get(name, "grey"), markersize=5,
                  markeredgecolor="white")
    for point, name in ((a, "A"), (b, "B")):
        left.plot(*point, "*", color="gold", markersize=14, markeredgecolor="black", zorder=6)
        left.annotate(name, point, textcoords="offset points", xytext=(7, 5), fontsize=11,
                      color="white", fontweight="bold")
    left.set_xlim(0, top)
    left.set_ylim(0, top)
    left.set_xlabel("w1")
    left.set_ylabel("w2")
    left.set_aspect("equal")
    left.set_title("loss surface of f(x) = w2·w1·x, target y = x", fontsize=10)
    left.legend(fontsize=7, loc="upper right", framealpha=0.8)

    for name, curve in paths.groupby("path", sort=False):
        curve = curve.sort_values("alpha")
        color = TOY_COLORS.get(name, "grey")
        right.plot(curve["alpha"], curve["loss"], color=color, linewidth=2.2,
                   label=TOY_LABELS.get(name, name))
        mid = curve.iloc[(curve["alpha"] - 0.5).abs().argmin()]
        right.plot(mid["alpha"], mid["loss"], "o", color=color, markersize=5)
        right.annotate(f"{mid['loss']:.4g}", (mid["alpha"], mid["loss"]),
                       textcoords="offset points", xytext=(6, 4) if name != "w2" else (8, -12),
                       fontsize=8, color=color)
    # a linear axis, since convexity is what the panel shows; the w1-only path (up to 9) is
    # cut off above its midpoint so that the full path's barrier stays readable
    ceiling = 1.15 * max(curve.iloc[(curve["alpha"] - 0.5).abs().argmin()]["loss"]
                         for _, curve in paths.groupby("path"))
    right.set_ylim(-0.02 * ceiling, ceiling)
    for name, curve in paths.groupby("path", sort=False):
        end = curve.sort_values("alpha").iloc[-1]
        if end["loss"] > ceiling:
            right.annotate(f"{TOY_LABELS.get(name, name).split(' (')[0]}: {end['loss']:.4g} at "
                           f"α = {end['alpha']:g} ↑", (0.98, 0.97), xycoords="axes fraction",
                           ha="right", va="top", fontsize=8, color=TOY_COLORS.get(name, "grey"))
    right.set_xlabel("α (0 = A, 1 = B along the blended weights)")
    right.set_ylabel("loss")
    right.set_title("loss along the three paths; values at α = ½", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle("Layer cuts of a 2-layer scalar linear network (PAPER.md §3.2, Fig. 4)")
    return save_png_pdf(fig, stem, dpi)


def _base(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
