"""Interactive figures (plotly) for the report page, drawn from the same tables as the PNG figures.

Each function takes records or a table and returns a ``plotly.graph_objects.Figure``, or None
when the table holds nothing it can show. The heatmaps draw :func:`~.trajectory.heatmap_specs`,
so a cell here has the number and colour it has in the PNG. Hovering a cell or a point shows its
exact value. Nothing here writes a file: :mod:`.report` places the figures on the page.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..core.barriers import reference_label, select_barriers
from .common import step_key, step_label, unit_of
from .trajectory import BAR_LABEL, METRICS, SCALE, HeatmapSpec, cell_decimals, largest_single_groups

#: One colour per split, and a dash per base, so that train/test and a/b read apart everywhere.
SPLIT_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
BASE_DASH = {"a": "solid", "b": "dash", None: "solid"}
METRIC_TITLE = {"loss": "loss (nats)", "error": "error (%)"}
_FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 12}


def heatmap_figure(spec: HeatmapSpec) -> go.Figure:
    """The panels of one heatmap side by side on one colour scale (white = 0). Each step's
    largest single-group barrier is boxed on layer-wise figures, as in the PNG."""
    names = list(spec.panels)
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True,
                           horizontal_spacing=0.04)
    label = BAR_LABEL[spec.metric]
    if spec.scale.saturated:
        label += (f"<br>scale from trained {spec.unit}s;<br>{spec.unit} "
                  f"{', '.join(spec.scale.saturated)} saturates")
    # the PNG's number of decimals: as in the paper, more only when every value is small
    decimals = cell_decimals(np.concatenate([SCALE[spec.metric] * t.to_numpy(dtype=float).ravel()
                                             for t in spec.panels.values()]))
    for column, name in enumerate(names, start=1):
        table = spec.panels[name]
        grid = SCALE[spec.metric] * table.to_numpy(dtype=float)
        steps = [str(c) for c in table.columns]
        rows = [str(r) for r in table.index]
        figure.add_trace(go.Heatmap(
            z=grid, x=steps, y=rows, zmin=-spec.scale.limit, zmax=spec.scale.limit,
            colorscale="RdBu_r", showscale=column == 1, colorbar={"title": {"text": label}},
            text=[[_cell_text(v, decimals) for v in row] for row in grid], texttemplate="%{text}", xgap=1, ygap=1,
            hovertemplate=(f"{name}<br>%{{y}} at {spec.unit} %{{x}}<br>barrier %{{z:.5g}}"
                           "<extra></extra>"), name=name,
        ), row=1, col=column)
        if spec.layerwise:
            for i, j in largest_single_groups(table):
                figure.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                                 line={"color": "black", "width": 2}, row=1, col=column)
        figure.update_xaxes(title_text=spec.unit, type="category", row=1, col=column)
    figure.update_yaxes(autorange="reversed", type="category")
    title = spec.title
    if spec.layerwise:
        title += f"<br><sub>boxed: the largest single-group barrier at each {spec.unit}</sub>"
    height = 180 + 26 * len(next(iter(spec.panels.values())).index)
    figure = _layout(figure, title, height=min(1400, max(340, height)))
    figure.update_layout(margin={"t": 110})  # the title's second line above the panel titles
    return figure


def full_path_figure(points: pd.DataFrame) -> go.Figure | None:
    """Loss and error along the full path θ(α) = (1−α)·a + α·b, one line per split."""
    rows = _one_pair(points)
    rows = rows[rows["kind"].isin(["endpoint", "full"])]
    if rows["alpha"].nunique() < 2:
        return None
    figure = make_subplots(rows=1, cols=2, subplot_titles=[METRIC_TITLE[m] for m in METRICS])
    for index, split in enumerate(dict.fromkeys(rows["split"])):
        line = rows[rows["split"] == split].drop_duplicates("alpha", keep="last").sort_values("alpha")
        for column, metric in enumerate(METRICS, start=1):
            figure.add_trace(go.Scatter(
                x=line["alpha"], y=_metric(line, metric), mode="lines+markers", name=split,
                legendgroup=split, showlegend=column == 1,
                line={"color": _colour(index)},
                hovertemplate=f"{split}<br>α %{{x}}<br>{metric} %{{y:.5g}}<extra></extra>",
            ), row=1, col=column)
    figure.update_xaxes(title_text="α (0 = a, 1 = b)")
    return _layout(figure, "the full path: every layer averaged at once")


def group_paths_figure(points: pd.DataFrame) -> go.Figure | None:
    """Loss along each single-group path whose grid has three or more α (``--layer-alphas``)."""
    rows = _one_pair(points)
    rows = rows[rows["kind"] == "group"]
    if rows.empty or rows.groupby(["group", "base", "split"])["alpha"].nunique().max() < 3:
        return None
    splits = list(dict.fromkeys(rows["split"]))
    figure = make_subplots(rows=1, cols=len(splits), subplot_titles=splits, shared_yaxes=True)
    groups = rows.sort_values("group_index", kind="stable")["group"].unique()
    for column, split in enumerate(splits, start=1):
        for index, group in enumerate(groups):
            for base in ("a", "b"):
                line = rows[(rows["split"] == split) & (rows["group"] == group) & (rows["base"] == base)]
                if line.empty:
                    continue
                line = line.drop_duplicates("alpha", keep="last").sort_values("alpha")
                figure.add_trace(go.Scatter(
                    x=line["alpha"], y=line["loss"], mode="lines+markers",
                    name=f"{group} (base {base})", legendgroup=f"{group}{base}",
                    showlegend=column == 1, line={"color": _colour(index), "dash": BASE_DASH[base]},
                    hovertemplate=f"{group}, base {base}<br>α %{{x}}<br>loss %{{y:.5g}}<extra></extra>",
                ), row=1, col=column)
    figure.update_xaxes(title_text="α")
    figure.update_yaxes(title_text="loss", col=1)
    return _layout(figure, "one layer group averaged at a time: loss along each group's path "
                           "(solid: the rest from a; dashed: from b)")


def layer_barriers_figure(barriers: pd.DataFrame, definition: str, reference: str) -> go.Figure | None:
    """One pair's single-group barriers as bars, input to output, per split and base."""
    rows = _one_pair(_chosen(barriers, definition, reference))
    rows = rows[rows["kind"] == "group"].sort_values("group_index", kind="stable")
    if rows.empty:
        return None
    figure = make_subplots(rows=1, cols=2, subplot_titles=[BAR_LABEL[m] for m in METRICS])
    for index, split in enumerate(dict.fromkeys(rows["split"])):
        for base in ("a", "b"):
            for column, metric in enumerate(METRICS, start=1):
                bars = rows[(rows["split"] == split) & (rows["base"] == base) & (rows["metric"] == metric)]
                if bars.empty:
                    continue
                figure.add_trace(go.Bar(
                    x=bars["group"], y=SCALE[metric] * bars["value"], name=f"{split}, base {base}",
                    legendgroup=f"{split}{base}", showlegend=column == 1,
                    marker={"color": _colour(index), "opacity": 1.0 if base == "a" else 0.55},
                    hovertemplate=(f"%{{x}}<br>{split}, base {base}<br>barrier %{{y:.5g}}"
                                   "<extra></extra>"),
                ), row=1, col=column)
    figure.update_layout(barmode="group")
    figure.update_xaxes(type="category")
    return _layout(figure, f"single-group barriers ({definition}, reference {reference_label(definition, reference)})")


def cumulative_figure(barriers: pd.DataFrame, definition: str, reference: str) -> go.Figure | None:
    """One pair's cumulative barriers: groups added in each order, one line per order and split."""
    rows = _one_pair(_chosen(barriers, definition, reference))
    rows = rows[rows["kind"] == "cumulative"]
    if rows.empty:
        return None
    figure = make_subplots(rows=1, cols=2, subplot_titles=[BAR_LABEL[m] for m in METRICS])
    splits = list(dict.fromkeys(rows["split"]))
    for order in dict.fromkeys(rows["order"]):
        for index, split in enumerate(splits):
            for base in ("a", "b"):
                for column, metric in enumerate(METRICS, start=1):
                    line = rows[(rows["order"] == order) & (rows["split"] == split)
                                & (rows["base"] == base) & (rows["metric"] == metric)]
                    if line.empty:
                        continue
                    line = line.sort_values("group_index")
                    figure.add_trace(go.Scatter(
                        x=line["group_index"] + 1, y=SCALE[metric] * line["value"],
                        customdata=line["group"], mode="lines+markers",
                        name=f"{order}, {split}, base {base}", legendgroup=f"{order}{split}{base}",
                        showlegend=column == 1,
                        line={"color": _colour(index), "dash": BASE_DASH[base]},
                        marker={"symbol": "circle" if order == "shallow" else "diamond"},
                        hovertemplate=(f"{order}: %{{x}} groups (last +%{{customdata}})<br>"
                                       f"{split}, base {base}<br>barrier %{{y:.5g}}<extra></extra>"),
                    ), row=1, col=column)
    figure.update_xaxes(title_text="groups averaged")
    return _layout(figure, f"cumulative barriers ({definition}, reference {reference_label(definition, reference)})")


def barrier_steps_figure(barriers: pd.DataFrame, definition: str, reference: str) -> go.Figure | None:
    """Over training: the full barrier and the largest single-group barrier at each step."""
    rows = _chosen(barriers, definition, reference)
    rows = rows[rows["step"].notna()]
    if rows.empty or rows["step"].nunique() < 2:
        return None
    unit = unit_of(rows)
    figure = make_subplots(rows=1, cols=2, subplot_titles=[BAR_LABEL[m] for m in METRICS])
    for index, split in enumerate(dict.fromkeys(rows["split"])):
        for column, metric in enumerate(METRICS, start=1):
            mine = rows[(rows["split"] == split) & (rows["metric"] == metric)]
            full = mine[mine["kind"] == "full"].sort_values("step")
            largest = mine[mine["kind"] == "group"].groupby("step")["value"].max().sort_index()
            for label, x, y, dash in (("full network", full["step"], full["value"], "solid"),
                                      ("largest single group", largest.index, largest, "dot")):
                if len(y):
                    figure.add_trace(go.Scatter(
                        x=x, y=SCALE[metric] * np.asarray(y, dtype=float), mode="lines+markers",
                        name=f"{label}, {split}", legendgroup=f"{label}{split}",
                        showlegend=column == 1, line={"color": _colour(index), "dash": dash},
                        hovertemplate=f"{label}, {split}<br>{unit} %{{x}}<br>barrier %{{y:.5g}}<extra></extra>",
                    ), row=1, col=column)
    figure.update_xaxes(title_text=unit, **_step_ticks(rows["step"]))
    return _layout(figure, f"barriers over training ({definition}, reference {reference_label(definition, reference)})")


def distances_figure(distances: pd.DataFrame) -> go.Figure | None:
    """L2 distance and cosine similarity between a and b per group, over steps."""
    if distances is None or distances.empty:
        return None
    frame = distances.assign(_step=pd.to_numeric(distances["step"], errors="coerce"),
                             _index=pd.to_numeric(distances["group_index"], errors="coerce"))
    frame = frame.sort_values(["_index", "_step"], na_position="first", kind="stable")
    figure = make_subplots(rows=1, cols=2, subplot_titles=["L2 distance between a and b",
                                                           "cosine similarity between a and b"])
    for index, group in enumerate(dict.fromkeys(frame["group"])):
        line = frame[frame["group"] == group]
        for column, field in enumerate(("l2_ab", "cos_ab"), start=1):
            figure.add_trace(go.Scatter(
                x=line["_step"], y=line[field], mode="lines+markers",
                name="full network" if group == "full" else group, legendgroup=group,
                showlegend=column == 1,
                line={"color": "black" if group == "full" else _colour(index),
                      "width": 3 if group == "full" else 1.5},
                hovertemplate=f"{group}<br>step %{{x}}<br>{field} %{{y:.5g}}<extra></extra>",
            ), row=1, col=column)
    figure.update_xaxes(title_text=unit_of(frame), **_step_ticks(frame["_step"]))
    return _layout(figure, "distances between the two runs, per group")


def robustness_figure(table: pd.DataFrame) -> go.Figure | None:
    """Loss from each base toward the average (solid) and along random directions of the same
    norm (dashed, mean over samples), per group and split, at the last step of the table."""
    if table is None or table.empty:
        return None
    frame = table.copy()
    steps = frame["step"].dropna()
    title = "robustness: the averaging direction vs random directions of the same norm"
    if len(steps):
        last = max(steps, key=lambda s: step_key(step_label(s)))
        frame = frame[frame["step"] == last]
        title += f" ({unit_of(frame)} {step_label(last)})"
    panels = [(split, base) for split in dict.fromkeys(frame["split"]) for base in dict.fromkeys(frame["base"])]
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                           subplot_titles=[f"{split}, from base {base}" for split, base in panels])
    groups = frame.sort_values("group_index", kind="stable")["group"].unique()
    for column, (split, base) in enumerate(panels, start=1):
        for index, group in enumerate(groups):
            for direction, dash in (("average", "solid"), ("random", "dash")):
                line = frame[(frame["split"] == split) & (frame["base"] == base)
                             & (frame["group"] == group) & (frame["direction"] == direction)]
                if line.empty:
                    continue
                line = line.sort_values("step_fraction")
                figure.add_trace(go.Scatter(
                    x=line["step_fraction"], y=line["loss_mean"], mode="lines+markers",
                    name=f"{group} ({direction})", legendgroup=f"{group}{direction}",
                    showlegend=column == 1, line={"color": _colour(index), "dash": dash},
                    hovertemplate=(f"{group}, {direction}<br>t %{{x}}<br>loss %{{y:.5g}}"
                                   "<extra></extra>"),
                ), row=1, col=column)
    figure.update_xaxes(title_text="step fraction t (0 = the base)")
    figure.update_yaxes(title_text="loss", col=1)
    return _layout(figure, title)


def subspace_figure(table: pd.DataFrame) -> go.Figure | None:
    """Loss against the step size σ along each kind of direction (mean over samples), per split."""
    if table is None or table.empty:
        return None
    frame = table.assign(loss=pd.to_numeric(table["loss"], errors="coerce"))
    splits = list(dict.fromkeys(frame["split"]))
    figure = make_subplots(rows=1, cols=len(splits), subplot_titles=splits, shared_yaxes=True)
    clean = frame[frame["direction"] == "clean"]
    moved = frame[frame["direction"] != "clean"]
    for column, split in enumerate(splits, start=1):
        keys = moved[moved["split"] == split][["direction", "network", "group"]].drop_duplicates()
        for index, (direction, network, group) in enumerate(keys.itertuples(index=False)):
            line = moved[(moved["split"] == split) & (moved["direction"] == direction)
                         & (moved["network"] == network) & (moved["group"] == group)]
            line = pd.concat([clean[(clean["split"] == split) & (clean["network"] == network)], line])
            mean = line.groupby("sigma")["loss"].mean().sort_index()
            figure.add_trace(go.Scatter(
                x=mean.index, y=mean.to_numpy(), mode="lines+markers",
                name=f"{direction}: {group} (network {network})",
                legendgroup=f"{direction}{group}{network}", showlegend=column == 1,
                line={"color": _colour(index), "dash": BASE_DASH.get(network, "solid")},
                hovertemplate=f"{direction}, {group}, {network}<br>σ %{{x}}<br>loss %{{y:.5g}}<extra></extra>",
            ), row=1, col=column)
    figure.update_xaxes(title_text="σ")
    figure.update_yaxes(title_text="mean loss", col=1)
    return _layout(figure, "subspace: loss after a step of size σ along each kind of direction")


def history_figure(history: pd.DataFrame) -> go.Figure | None:
    """Training curves: test (and train) loss of each run or client over its epochs or rounds."""
    if history is None or history.empty:
        return None
    if "epoch" in history and "role" in history:  # a pair of independent runs
        x, who = "epoch", "role"
        frame = history.melt(id_vars=[who, x], value_vars=[c for c in ("train_loss", "test_loss") if c in history],
                             var_name="split", value_name="loss")
        frame["split"] = frame["split"].str.replace("_loss", "", regex=False)
    elif "round" in history and "model" in history:  # a federated run
        x, who = "round", "model"
        frame = history
    else:
        return None
    frame = frame.dropna(subset=["loss"])
    if frame.empty:
        return None
    figure = go.Figure()
    for index, (name, split) in enumerate(frame[[who, "split"]].drop_duplicates().itertuples(index=False)):
        line = frame[(frame[who] == name) & (frame["split"] == split)].sort_values(x)
        figure.add_trace(go.Scatter(
            x=line[x], y=line["loss"], mode="lines+markers", name=f"{name}, {split}",
            line={"color": _colour(index)},
            hovertemplate=f"{name}, {split}<br>{x} %{{x}}<br>loss %{{y:.5g}}<extra></extra>",
        ))
    figure.update_xaxes(title_text=x, **_step_ticks(frame[x]))
    figure.update_yaxes(title_text="loss")
    return _layout(figure, "training: loss of each model")


# -- helpers ----------------------------------------------------------------------------------


def _chosen(barriers: pd.DataFrame, definition: str, reference: str) -> pd.DataFrame:
    if barriers is None or barriers.empty:
        return pd.DataFrame(columns=["step", "kind", "split", "metric", "value", "group_index"])
    rows = select_barriers(barriers, definition, reference)
    return rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"),
                       group_index=pd.to_numeric(rows["group_index"], errors="coerce"))


def _one_pair(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of one checkpoint pair: step null, or the last step of a trajectory."""
    if rows.empty or "step" not in rows or rows["step"].isna().all():
        return rows
    last = max(rows["step"].dropna(), key=lambda s: step_key(step_label(s)))
    return rows[rows["step"] == last]


def _metric(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows["loss"] if metric == "loss" else 100.0 * (1.0 - rows["accuracy"])


def _step_ticks(steps: pd.Series) -> dict:
    """A tick at each step when there are few (plotly would add 0.5, 1.5, ... between epochs)."""
    values = sorted(set(pd.to_numeric(steps, errors="coerce").dropna()))
    return {"tickvals": values} if 0 < len(values) <= 25 else {}


def _cell_text(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if np.isfinite(value) else "nan"


def _colour(index: int) -> str:
    return SPLIT_COLOURS[index % len(SPLIT_COLOURS)]


def _layout(figure: go.Figure, title: str, height: int = 380) -> go.Figure:
    figure.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, height=height,
                         font=_FONT, template="plotly_white", margin={"l": 60, "r": 20, "t": 80, "b": 50},
                         legend={"font": {"size": 11}})
    return figure
