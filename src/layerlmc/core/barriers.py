"""Barriers as pure functions of point records (docs/design.md §3).

For a path θ(α) and a metric M (``loss`` or ``error`` = 1 − accuracy):

- ``midpoint``: M(θ(½)) − (r0 + r1)/2
- ``max``: max over the grid's α in [0, 1] of M(θ(α)) − ((1−α)·r0 + α·r1)

with references ``models`` (r0, r1 = the metrics of the full endpoint models a and b, the
paper's choice also for single-layer paths) or ``path`` (the path's own α=0 and α=1 points).

``max`` with ``models`` on a group or cumulative path would take the maximum over the whole
path, whose α=1 end (base a) is a carrying b's groups: a layer swap compared with b, not an
average (3–7 nats where the midpoint says 0.01). So that request uses the ``path`` reference on
those paths, and their rows say so (``reference`` = ``path``; :func:`row_reference`). The
reference ``models-swap`` asks for the whole-path maximum against the models explicitly; its
rows record ``models``. docs/results.md gives the reasons for this choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..errors import LayerLMCError, unknown
from .records import BARRIER_COLUMNS

DEFINITIONS = ("midpoint", "max")
#: the references a study may ask for; a row records one of :data:`ROW_REFERENCES`
REFERENCES = ("models", "path", "models-swap")
ROW_REFERENCES = ("models", "path")
#: ``models`` everywhere, ``max`` on group and cumulative paths included: the explicit request
#: for a maximum that takes in their α = 1 end, a layer swap
SWAP_REFERENCE = "models-swap"
#: the path kinds whose α = 1 end is not b but a carrying some of b's groups (base a)
SWAP_KINDS = ("group", "cumulative")
METRICS = ("loss", "error")
PATH_FIELDS = ["step", "unit", "kind", "group", "group_index", "base", "order", "split"]


def check_choices(definitions: Sequence[str], references: Sequence[str]) -> None:
    for d in definitions:
        if d not in DEFINITIONS:
            raise unknown("barrier definition", d, DEFINITIONS)
    for r in references:
        if r not in REFERENCES:
            raise unknown("barrier reference", r, REFERENCES)
    if not definitions or not references:
        raise LayerLMCError("at least one barrier definition and one reference are needed")


def row_reference(definition: str, reference: str, kind: str) -> str:
    """The reference a barrier row of a ``kind`` path uses when ``definition`` and ``reference``
    are asked for: ``path`` for ``max`` with ``models`` on group and cumulative paths (their
    α = 1 end is a layer swap, which ``models`` would compare with b), ``models`` for
    ``models-swap``, else ``reference`` itself."""
    if reference == SWAP_REFERENCE:
        return "models"
    if definition == "max" and reference == "models" and kind in SWAP_KINDS:
        return "path"
    return reference


def select_barriers(barriers: pd.DataFrame, definition: str, reference: str) -> pd.DataFrame:
    """The rows of ``barriers`` that show ``definition`` with ``reference``: each row's own
    reference is :func:`row_reference` of its kind."""
    if barriers.empty:
        return barriers
    wanted = pd.Series([row_reference(definition, reference, k) for k in barriers["kind"]],
                       index=barriers.index, dtype=object)
    return barriers[(barriers["definition"] == definition) & (barriers["reference"] == wanted)]


def reference_label(definition: str, reference: str) -> str:
    """How a table or figure of ``definition`` and ``reference`` names the references it shows."""
    full, layers = (row_reference(definition, reference, k) for k in ("full", "group"))
    if full == layers:
        return reference
    return f"{full} (full path), {layers} (group and cumulative paths)"


def swap_note(shown: pd.DataFrame, definition: str, reference: str) -> str | None:
    """One line for a printed table of ``shown`` rows when its ``max`` is not what ``models``
    means on the full path: taken against the group paths' own ends, or (``models-swap``) over
    the layer swap at α = 1."""
    if definition != "max" or shown.empty or not shown["kind"].isin(SWAP_KINDS).any():
        return None
    if reference == "models":
        return ("note: max of group and cumulative paths is against the path's own ends "
                "(reference path): their α = 1 end is a carrying b's groups, a layer swap, not b; "
                f"--reference {SWAP_REFERENCE} compares the whole path with the models")
    if reference == SWAP_REFERENCE:
        return ("note: max of group and cumulative paths includes their α = 1 end, a carrying "
                "b's groups (a layer swap), compared with b: the cost of a swap, not of averaging")
    return None


def needed_alphas(definitions: Sequence[str], references: Sequence[str], grid: Sequence[float]) -> set[float]:
    """The α values a path must have evaluated for the requested barriers."""
    need: set[float] = set()
    if "midpoint" in definitions:
        need.add(0.5)
    if "max" in definitions:
        need.update(a for a in grid if 0.0 <= a <= 1.0)
        need.update((0.0, 1.0))
    if "path" in references:
        need.update((0.0, 1.0))
    return need


def barrier_value(
    alphas: Sequence[float], values: Sequence[float], r0: float, r1: float, definition: str
) -> float:
    """One barrier of one path; NaN when the grid lacks what the definition needs."""
    curve = dict(zip(alphas, values))
    if definition == "midpoint":
        if 0.5 not in curve:
            return math.nan
        return curve[0.5] - (r0 + r1) / 2
    inside = [(a, v) for a, v in curve.items() if 0.0 <= a <= 1.0]
    if not inside:
        return math.nan
    gaps = [v - ((1 - a) * r0 + a * r1) for a, v in inside]
    # a NaN anywhere on the path makes the barrier NaN rather than silently skipped
    return math.nan if any(g != g for g in gaps) else max(gaps)


def compute_barriers(
    points: pd.DataFrame,
    definitions: Sequence[str] = ("midpoint",),
    references: Sequence[str] = ("models",),
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """Barrier rows (``barriers.csv`` columns) for every path in ``points``.

    ``points`` holds the point records of docs/design.md §5, including the ``endpoint`` records of
    ``a`` and ``b`` for each step and split. Each row's ``reference`` is the one it used
    (:func:`row_reference`), which for ``max`` on group and cumulative paths is ``path`` when
    ``models`` is asked for; a row asked for twice in this way is written once.
    """
    definitions, references = list(dict.fromkeys(definitions)), list(dict.fromkeys(references))
    check_choices(definitions, references)
    if points.empty:
        return pd.DataFrame(columns=list(BARRIER_COLUMNS))
    points = points.copy()
    points["error"] = 1.0 - points["accuracy"]
    # pandas drops NaN keys in groupby; step/unit/base/order are legitimately null here
    keyed = points.astype({c: object for c in PATH_FIELDS}).fillna({c: "\0" for c in PATH_FIELDS})
    endpoints = keyed[keyed["kind"] == "endpoint"]
    reference = {
        (row.step, row.unit, row.split, row.base): row for row in endpoints.itertuples(index=False)
    }
    rows = []
    for key, path in keyed[keyed["kind"] != "endpoint"].groupby(PATH_FIELDS, sort=False):
        fields = dict(zip(PATH_FIELDS, key))
        path = path.sort_values("alpha")
        alphas = path["alpha"].tolist()
        end_a = reference.get((fields["step"], fields["unit"], fields["split"], "a"))
        end_b = reference.get((fields["step"], fields["unit"], fields["split"], "b"))
        for metric in metrics:
            values = path[metric].tolist()
            curve = dict(zip(alphas, values))
            done = set()
            for requested in references:
                for definition in definitions:
                    ref = row_reference(definition, requested, fields["kind"])
                    if (definition, ref) in done:
                        continue  # asked for twice: `max` of `models` and of `path` on a group
                    done.add((definition, ref))
                    if ref == "models":
                        if end_a is None or end_b is None:
                            continue
                        r0, r1 = getattr(end_a, metric), getattr(end_b, metric)
                    else:
                        if 0.0 not in curve or 1.0 not in curve:
                            continue
                        r0, r1 = curve[0.0], curve[1.0]
                    value = barrier_value(alphas, values, r0, r1, definition)
                    rows.append({**fields, "metric": metric, "definition": definition,
                                 "reference": ref, "value": value})
    table = pd.DataFrame(rows, columns=list(BARRIER_COLUMNS))
    table = table.replace({c: {"\0": None} for c in PATH_FIELDS})
    # integer columns stay integers in barriers.csv, with empty cells where null
    return table.astype({"group_index": "Int64", "step": "Int64"})


def summary_table(barriers: pd.DataFrame, definition: str = "midpoint", reference: str = "models") -> pd.DataFrame:
    """The view printed by the CLI: one row per path (full, then groups, then cumulative
    prefixes), one column per split × metric × base. The full path has no base, so its
    barrier is shown under every base. Rows are chosen by :func:`select_barriers`."""
    chosen = select_barriers(barriers, definition, reference)
    if chosen.empty:
        return pd.DataFrame()
    is_full = chosen["kind"] == "full"
    bases = sorted(set(chosen.loc[~is_full, "base"].dropna())) or [None]
    rows = pd.concat([chosen[is_full].assign(base=b) for b in bases] + [chosen[~is_full]])
    rows = rows.assign(
        rank=rows["kind"].map({"full": 0, "group": 1, "cumulative": 2}),
        position=rows["group_index"].fillna(-1),
        path=[
            f"{o} +{g}" if k == "cumulative" else g
            for k, o, g in zip(rows["kind"], rows["order"], rows["group"])
        ],
        column=[
            f"{s} {m}" + (f" [{b}]" if isinstance(b, str) else "")
            for s, m, b in zip(rows["split"], rows["metric"], rows["base"])
        ],
    )
    # cumulative orders appear in the order they were asked for
    order_rank = {o: i for i, o in enumerate(dict.fromkeys(rows["order"].dropna()))}
    rows = rows.assign(order_rank=rows["order"].map(order_rank).fillna(-1))
    table = rows.pivot(index=["rank", "order_rank", "position", "path"], columns="column", values="value")
    table = table.sort_index().droplevel(["rank", "order_rank", "position"])
    split_rank = {s: i for i, s in enumerate(dict.fromkeys(rows["split"]))}
    metric_rank = {m: i for i, m in enumerate(METRICS)}
    columns = sorted(table.columns, key=lambda c: (split_rank[c.split()[0]], metric_rank[c.split()[1]], c))
    return table[columns]


def trajectory_summary(barriers: pd.DataFrame, definition: str = "midpoint", reference: str = "models") -> pd.DataFrame:
    """Per step: the full-network barrier and the largest single-group barrier over both bases
    (and its group), for each split × metric: the paper's headline comparison. Rows are chosen
    by :func:`select_barriers`."""
    chosen = select_barriers(barriers, definition, reference)
    rows = {}
    for (step, split, metric), frame in chosen.groupby(["step", "split", "metric"], sort=True):
        full = frame[frame["kind"] == "full"]["value"]
        groups = frame[frame["kind"] == "group"]
        row = rows.setdefault(step, {})
        row[f"{split} {metric} full"] = float(full.iloc[0]) if len(full) else float("nan")
        if len(groups) and groups["value"].notna().any():
            top = groups.loc[groups["value"].idxmax()]
            row[f"{split} {metric} max layer"] = float(top["value"])
            row[f"{split} {metric} layer"] = f"{top['group']} [{top['base']}]"
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "step"
    return table
