"""Barriers and distances over training (Figures 1 and 3 of the paper), drawn from records only.

``plot_trajectory`` turns the rows of ``barriers.csv`` with several steps into heatmaps laid out
like the paper's: x = step (epoch), y = ``full`` then the logic layers (or, for cumulative
averaging, the growing prefixes ``+group``), one panel per base ("interpolated into a / b"), the
barrier written in each cell. ``plot_distances`` draws the per-group distances logged alongside
(PAPER.md §1.6). No model is ever needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..core.barriers import reference_label, row_reference, select_barriers
from .common import file_name, save_png_pdf, step_key, step_label, unit_of

#: Colorbar labels; error is stored as a fraction and shown in percentage points.
BAR_LABEL = {"loss": "barrier (loss)", "error": "barrier (error, pp)"}
SCALE = {"loss": 1.0, "error": 100.0}
METRICS = ("loss", "error")
BASES = ("a", "b")
CMAP = "RdBu_r"
DPI = 150

# Layout of the heatmaps, in inches.
_ROW_H = 0.3
_MIN_COL_W = 0.5
_CHAR_W = 0.075  # one character of cell text at _CELL_FONT points, with some slack
_CELL_FONT = 8
_TITLE_CHAR_W = 0.09  # one character of the 11-point title


def plot_trajectory(
    barriers: pd.DataFrame,
    distances: pd.DataFrame | None,
    out: Path,
    definition: str = "midpoint",
    reference: str = "models",
    *,
    dpi: int = DPI,
) -> list[Path]:
    """Every trajectory figure the records support; returns the files written (PNG and PDF).

    - ``layerwise_{split}_{metric}``: rows ``full`` + groups (input → output), columns = steps,
      left panel base ``a``, right panel base ``b``.
    - ``cumulative_{order}_{split}_{metric}``: rows = prefixes ``+group`` in prefix order, one
      figure per order (``random:0`` is written ``random-0`` in the file name).
    - ``distances`` (see :func:`plot_distances`) when ``distances`` has rows.

    Only rows of the chosen barrier ``definition`` and ``reference`` are drawn; figures whose rows
    are absent are skipped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for spec in heatmap_specs(barriers, definition, reference):
        files += _heatmaps(spec.panels, spec.metric, spec.unit, spec.title, out / spec.name, dpi,
                           scale=spec.scale, mark_largest=spec.layerwise)
    if distances is not None and not distances.empty:
        files += plot_distances(distances, out, dpi=dpi)
    return files


@dataclass(frozen=True)
class HeatmapSpec:
    """One heatmap figure of a trajectory: its panels (title → rows × steps), named for its file.

    The PNG figures and the interactive report draw the same specs, so both show the same cells
    on the same colour scale.
    """

    panels: dict[str, pd.DataFrame]
    split: str
    metric: str
    unit: str
    title: str
    name: str
    layerwise: bool
    scale: ColourScale


def heatmap_specs(barriers: pd.DataFrame, definition: str = "midpoint",
                  reference: str = "models") -> list[HeatmapSpec]:
    """The layer-wise and cumulative heatmaps that the rows of ``barriers`` support, each on the
    colour scale of its split and metric (the layer-wise and cumulative figures are compared)."""
    chosen = _chosen(barriers, definition, reference)
    if chosen.empty:
        return []
    unit = unit_of(chosen)
    splits = list(dict.fromkeys(chosen["split"]))
    groups = chosen[chosen["kind"] == "group"]
    full = chosen[chosen["kind"] == "full"]
    cumulative = chosen[chosen["kind"] == "cumulative"]
    # (panels, split, metric, title, name, layer-wise?), given their scales below
    pending: list[tuple[dict, str, str, str, str, bool]] = []
    for split in splits:
        for metric in METRICS:
            layer_rows = _select(groups, split, metric)
            if layer_rows.empty:
                continue
            panels = {
                f"interpolated into {base}": _layer_table(_select(full, split, metric),
                                                          layer_rows[layer_rows["base"] == base])
                for base in BASES
            }
            title = (f"{split} {metric}: layer-wise barriers "
                     f"({definition}, reference {reference_label(definition, reference)})")
            pending.append((_merge(panels), split, metric, title,
                            f"layerwise_{file_name(split)}_{metric}", True))
    for order in dict.fromkeys(cumulative["order"].dropna()):
        of_order = cumulative[cumulative["order"] == order]
        for split in splits:
            for metric in METRICS:
                rows = _select(of_order, split, metric)
                if rows.empty:
                    continue
                panels = {f"interpolated into {base}": _prefix_table(rows, base) for base in BASES}
                title = (f"{split} {metric}: cumulative averaging starting from {order} layers "
                         f"({definition}, reference "
                         f"{row_reference(definition, reference, 'cumulative')})")
                name = f"cumulative_{file_name(order)}_{file_name(split)}_{metric}"
                pending.append((_merge(panels), split, metric, title, name, False))
    compared: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for panels, split, metric, *_ in pending:
        compared.setdefault((split, metric), []).extend(panels.values())
    scales = {key: colour_scale(tables, key[1]) for key, tables in compared.items()}
    return [HeatmapSpec(panels, split, metric, unit, title, name, layerwise, scales[(split, metric)])
            for panels, split, metric, title, name, layerwise in pending]


def plot_distances(distances: pd.DataFrame, out: Path, *, dpi: int = DPI) -> list[Path]:
    """``distances.png``/``.pdf``: 2×2 line plots over steps, one line per group (the whole
    network, group ``full``, thick and black): L2 and cosine between ``a`` and ``b``, and L2 and
    cosine of ``a`` (solid) and ``b`` (dashed) to their own step-0 checkpoints."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if distances is None or distances.empty:
        return []
    frame = distances.copy()
    frame["_step"] = pd.to_numeric(frame["step"], errors="coerce")
    order = frame.assign(_gi=pd.to_numeric(frame["group_index"], errors="coerce"))
    order = order.assign(_full=order["group"] != "full")
    order = order.sort_values(["_full", "_gi"], kind="stable")
    names = list(dict.fromkeys(order["group"]))
    layers = [n for n in names if n != "full"]
    cmap = plt.get_cmap("viridis")
    color = {n: cmap(i / max(1, len(layers) - 1)) for i, n in enumerate(layers)}
    color["full"] = "black"

    many = len(names) > 8
    fig, axes = plt.subplots(2, 2, figsize=(12 if many else 10.5, 7.5), sharex=True,
                             constrained_layout=True)
    panels = [
        (axes[0][0], "L2 distance between a and b", "L2 distance", [("l2_ab", "-")]),
        (axes[0][1], "cosine similarity between a and b", "cosine similarity", [("cos_ab", "-")]),
        (axes[1][0], "L2 distance to own initialisation (step 0)", "L2 distance",
         [("l2_a_init", "-"), ("l2_b_init", "--")]),
        (axes[1][1], "cosine similarity to own initialisation (step 0)", "cosine similarity",
         [("cos_a_init", "-"), ("cos_b_init", "--")]),
    ]
    handles: dict[str, object] = {}
    for ax, title, ylabel, columns in panels:
        drawn = False
        for name in names:
            rows = frame[frame["group"] == name].sort_values("_step")
            for column, style in columns:
                if column not in rows or rows[column].isna().all():
                    continue
                (line,) = ax.plot(rows["_step"], rows[column].astype(float), linestyle=style,
                                  color=color[name], linewidth=2.4 if name == "full" else 1.1,
                                  marker="." if len(rows) < 30 else None,
                                  zorder=3 if name == "full" else 2,
                                  label="full network" if name == "full" else name)
                handles.setdefault(name, line)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
        if drawn and len(columns) > 1:
            ax.plot([], [], color="grey", linestyle="-", label="a")
            ax.plot([], [], color="grey", linestyle="--", label="b")
            ax.legend(handles=ax.get_lines()[-2:], labels=["model a", "model b"], fontsize=8,
                      loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    unit = unit_of(frame)
    for ax in axes[1]:
        ax.set_xlabel(unit)
    labels = [n for n in names if n in handles]
    shown = [handles[n] for n in labels]
    text = ["full network" if n == "full" else n for n in labels]
    if many:
        fig.legend(shown, text, loc="outside right center", fontsize=7, title="group",
                   ncol=1 if len(labels) <= 35 else 2)
    elif shown:
        axes[0][0].legend(shown, text, fontsize=8, title="group")
    fig.suptitle("distances between the models and to their initialisation, per group")
    return save_png_pdf(fig, out / "distances", dpi)


# -- tables -----------------------------------------------------------------------------------


def plot_multimodel(table: pd.DataFrame, out: Path, *, dpi: int = DPI) -> list[Path]:
    """``multimodel_{split}_{metric}``: rows ``full`` + groups, columns = rounds; each cell the
    barrier of the K-client average (a group: averaged alone) against the clients' mean."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for spec in multimodel_specs(table):
        files += _heatmaps(spec.panels, spec.metric, spec.unit, spec.title, out / spec.name, dpi)
    return files


def multimodel_specs(table: pd.DataFrame) -> list[HeatmapSpec]:
    """The multi-model heatmaps (one panel each: the clients' average against their mean), each
    on its own colour scale."""
    chosen = _chosen(table, "average", "clients")
    if chosen.empty:
        return []
    unit = unit_of(chosen)
    specs = []
    for split in dict.fromkeys(chosen["split"]):
        for metric in METRICS:
            rows = _select(chosen, split, metric)
            if rows.empty:
                continue
            panels = {"average of the clients vs their mean": _layer_table(
                rows[rows["kind"] == "full"], rows[rows["kind"] == "group"])}
            title = f"{split} {metric}: barrier of the clients' average, full and one group at a time"
            specs.append(HeatmapSpec(panels, split, metric, unit, title,
                                     f"multimodel_{file_name(split)}_{metric}", False,
                                     colour_scale(list(panels.values()), metric)))
    return specs


def _chosen(barriers: pd.DataFrame, definition: str, reference: str) -> pd.DataFrame:
    if barriers is None or barriers.empty:
        return pd.DataFrame(columns=["step", "kind", "split", "metric"])
    chosen = select_barriers(barriers, definition, reference).copy()
    chosen["value"] = pd.to_numeric(chosen["value"], errors="coerce")
    chosen["group_index"] = pd.to_numeric(chosen["group_index"], errors="coerce")
    return chosen


def _select(rows: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    return rows[(rows["split"] == split) & (rows["metric"] == metric)]


def _layer_table(full: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Rows ``full`` then groups by ``group_index``; columns = steps."""
    ordered = groups.sort_values("group_index", kind="stable")
    both = pd.concat([full.assign(_row="full", _rank=-1.0),
                      ordered.assign(_row=ordered["group"], _rank=ordered["group_index"])])
    return _pivot(both)


def _prefix_table(rows: pd.DataFrame, base: str) -> pd.DataFrame:
    """Rows = prefixes ``+group`` in prefix order; columns = steps."""
    mine = rows[rows["base"] == base]
    return _pivot(mine.assign(_row="+" + mine["group"].astype(str), _rank=mine["group_index"]))


def _pivot(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(_col=rows["step"].map(step_label))
    rows = rows.drop_duplicates(["_row", "_col"], keep="last")
    ranks = rows.groupby("_row", sort=False)["_rank"].min().sort_values(kind="stable")
    cols = sorted(set(rows["_col"]), key=step_key)
    return rows.pivot(index="_row", columns="_col", values="value").reindex(
        index=list(ranks.index), columns=cols)


# -- drawing ----------------------------------------------------------------------------------


def _merge(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """All panels on the same rows and columns (the union, in first-seen order)."""
    rows: list = []
    cols: set = set()
    for table in tables.values():
        rows += [r for r in table.index if r not in rows]
        cols |= set(table.columns)
    columns = sorted(cols, key=step_key)
    return {name: table.reindex(index=rows, columns=columns) for name, table in tables.items()}


def cell_decimals(values: np.ndarray) -> int:
    """1 decimal as in the paper; more when every value is below 0.1 in size (else all "0.0")."""
    finite = np.abs(values[np.isfinite(values)])
    top = finite.max() if finite.size else 0.0
    if top == 0.0 or top >= 0.1:
        return 1
    return int(min(4, max(2, -math.floor(math.log10(top)))))


@dataclass(frozen=True)
class ColourScale:
    """A symmetric colour scale (white = 0) and the steps whose cells may lie beyond it."""

    limit: float
    saturated: tuple[str, ...] = ()


def colour_scale(tables: Sequence[pd.DataFrame], metric: str) -> ColourScale:
    """One scale for every table a reader compares, from the trained steps.

    The step-0 column (the initialisation, untrained) is left out of the scale when later
    steps exist: an untrained pair's barrier says nothing about training and would wash out
    every trained cell. Its cells still show their numbers; beyond the scale they saturate, and
    :attr:`ColourScale.saturated` names the step so the colour bar can say so.
    """
    columns = list(dict.fromkeys(c for table in tables for c in table.columns))
    untrained = [c for c in columns if c == "0"] if len(columns) > 1 else []
    trained = [SCALE[metric] * t.drop(columns=untrained, errors="ignore").to_numpy(dtype=float).ravel()
               for t in tables]
    values = np.concatenate(trained) if trained else np.array([])
    finite = values[np.isfinite(values)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    beyond = [SCALE[metric] * t[c].to_numpy(dtype=float) for t in tables for c in untrained
              if c in t.columns]
    saturated = tuple(untrained) if any((np.abs(v[np.isfinite(v)]) > limit).any() for v in beyond) else ()
    return ColourScale(limit, saturated)


def largest_single_groups(table: pd.DataFrame) -> list[tuple[int, int]]:
    """(row, column) of the largest single-group barrier at each step of a layer-wise table
    (the ``full`` row is the whole network, not a group). A step whose groups have no positive
    barrier has none to point at (an untrained pair from one initialization: all zero)."""
    cells = []
    groups = [i for i, name in enumerate(table.index) if name != "full"]
    values = table.to_numpy(dtype=float)
    for column in range(values.shape[1]):
        candidates = [(values[i, column], i) for i in groups
                      if np.isfinite(values[i, column]) and values[i, column] > 0]
        if candidates:
            cells.append((max(candidates)[1], column))
    return cells


def _heatmaps(tables: dict[str, pd.DataFrame], metric: str, unit: str, title: str, stem: Path,
              dpi: int, *, scale: ColourScale | None = None, mark_largest: bool = False) -> list[Path]:
    """One heatmap panel per table, keyed by the panel's title, on one colour scale (``scale``:
    shared with other figures; default: this figure's own); with ``mark_largest``, each step's
    largest single-group barrier is boxed."""
    tables = _merge(tables)
    first = next(iter(tables.values()))
    rows, cols = list(first.index), list(first.columns)
    scale = scale or colour_scale(list(tables.values()), metric)
    grids = {name: SCALE[metric] * table.to_numpy(dtype=float) for name, table in tables.items()}
    every = np.concatenate([g.ravel() for g in grids.values()])
    decimals = cell_decimals(every)
    finite = every[np.isfinite(every)]
    norm = matplotlib.colors.Normalize(vmin=-scale.limit, vmax=scale.limit)  # symmetric: white = 0
    cmap = plt.get_cmap(CMAP).with_extremes(bad="lightgrey")

    texts = [f"{v:.{decimals}f}" for v in finite] or ["nan"]
    chars = max(len(t) for t in texts + ["nan"])
    col_w = max(_MIN_COL_W, _CHAR_W * chars + 0.12)
    label_w = 0.075 * max(len(str(r)) for r in rows) + 0.4
    panel_w = col_w * len(cols)
    width = label_w + len(grids) * panel_w + 1.6
    if _TITLE_CHAR_W * len(title) > width and " (" in title:  # narrow figure: title on two lines
        head, _, tail = title.partition(" (")
        title = f"{head}\n({tail}"
    width = min(60.0, max(width, _TITLE_CHAR_W * max(map(len, title.split("\n"))) + 0.4))
    height = min(60.0, _ROW_H * len(rows) + 1.8)
    fig, axes = plt.subplots(1, len(grids), figsize=(width, height), sharey=True, constrained_layout=True,
                             squeeze=False)
    axes = list(axes[0])
    image = None
    for index, (ax, (panel, grid)) in enumerate(zip(axes, grids.items())):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                value = grid[i, j]
                if np.isfinite(value):
                    dark = abs(min(max(norm(value), 0.0), 1.0) - 0.5) > 0.3
                    label, colour = f"{value:.{decimals}f}", "white" if dark else "black"
                else:
                    label, colour = "nan", "dimgrey"
                # cell texts stay inside their cells: keep them out of the layout engine
                ax.text(j, i, label, ha="center", va="center", fontsize=_CELL_FONT,
                        color=colour).set_in_layout(False)
        if mark_largest:
            for i, j in largest_single_groups(tables[panel]):
                ax.add_patch(matplotlib.patches.Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
        ax.set_xticks(range(len(cols)), cols, fontsize=9)
        ax.set_yticks(range(len(rows)), rows, fontsize=9)
        ax.tick_params(length=0)
        if index:
            ax.tick_params(labelleft=False)
        ax.set_xlabel(unit)
        ax.set_title(panel)
        for spine in ax.spines.values():
            spine.set_visible(False)
    colorbar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.02,
                            shrink=1.0 if len(rows) > 6 else 0.9,
                            extend="both" if scale.saturated else "neither")
    label = BAR_LABEL[metric]
    if scale.saturated:
        label += f"\nscale from trained {unit}s; {unit} {', '.join(scale.saturated)} saturates"
    colorbar.set_label(label)
    if mark_largest:
        title += "\nboxed: the largest single-group barrier at each " + unit
    fig.suptitle(title, fontsize=11)
    return save_png_pdf(fig, stem, dpi)


