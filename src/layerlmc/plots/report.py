"""One self-contained HTML page per run folder, built from its records alone (``layerlmc report``).

The page holds a run's summary tables, interactive figures (:mod:`.interactive`, plotly, with its
script written into the page so it opens offline from the file system), the inputs the numbers
depend on, the run's settings and links to every raw file. A training or federated run shows its
analyses (``analysis/``, ``multimodel/``) on the same page.

Reading never changes the folder: a torn or damaged line of ``points.jsonl`` or of a CSV table is
skipped and counted, and the page says what is missing or was skipped instead of failing.
"""

from __future__ import annotations

import io
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd
import plotly.io
import yaml
from plotly.offline import get_plotlyjs

from .._version import __version__
from ..core.barriers import compute_barriers, reference_label, summary_table, trajectory_summary
from ..core.records import BARRIER_COLUMNS, read_jsonl
from ..errors import LayerLMCError
from . import interactive
from .trajectory import heatmap_specs, multimodel_specs

REPORT_NAME = "report.html"

#: The tables a run folder may hold, with the columns a reader needs in each.
TABLES = {
    "barriers": ("barriers.csv", BARRIER_COLUMNS),
    "distances": ("distances.csv", ("step", "group", "l2_ab", "cos_ab")),
    "robustness": ("robustness.csv", ("group", "base", "split", "direction", "step_fraction", "loss_mean")),
    "subspace": ("subspace.csv", ("direction", "network", "group", "sigma", "split", "loss")),
    "multimodel": ("multimodel.csv", BARRIER_COLUMNS),
    "clients": ("clients.csv", ("client", "name")),
    "cuts": ("cuts.csv", ()),
    "convexity": ("convexity.csv", ()),
    "toy paths": ("paths.csv", ()),
    "toy summary": ("summary.csv", ()),
}
#: Files whose presence makes a folder a run folder.
MARKERS = ("run.json", "points.jsonl", "history.jsonl") + tuple(name for name, _ in TABLES.values())
#: Sub-folders that are never analyses of their own.
_NOT_ANALYSES = {"figures", "checkpoints"}


@dataclass
class RunRecords:
    """What one run folder holds, read without changing it; ``notes`` say what was missing,
    skipped or unreadable."""

    path: Path
    kind: str
    run: dict | None = None
    config: dict | None = None
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    children: list[RunRecords] = field(default_factory=list)


def read_run_folder(folder: str | Path) -> RunRecords:
    """The records of ``folder`` and of the analyses inside it.

    Raises :class:`LayerLMCError` only when ``folder`` is not a run folder at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LayerLMCError(f"{folder} is not a folder: `layerlmc report` takes a run folder "
                            f"(the --out of an analysis, a training or a federated run)")
    if not any((folder / name).is_file() for name in MARKERS):
        raise LayerLMCError(f"{folder} is not a layerlmc run folder: expected run.json, points.jsonl or "
                            f"barriers.csv (an analysis), or history.jsonl (a training run)")
    records = RunRecords(folder, kind="")
    records.run = _read_mapping(folder / "run.json", json.loads, (json.JSONDecodeError,),
                                "inputs and status are unknown", records.notes)
    records.config = _read_mapping(folder / "config.yaml", yaml.safe_load, (yaml.YAMLError,),
                                   "the settings are not shown", records.notes)
    if (folder / "points.jsonl").is_file():
        points, bad = read_jsonl(folder / "points.jsonl")
        records.points = pd.DataFrame(points)
        if bad:
            lines = ", ".join(str(number) for number, _ in bad[:10]) + (" …" if len(bad) > 10 else "")
            records.notes.append(f"points.jsonl: {len(bad)} line{'s' * (len(bad) != 1)} that "
                                 f"{'are' if len(bad) != 1 else 'is'} not a complete record skipped "
                                 f"(line {lines}); the page shows the {len(points)} complete records")
    if (folder / "history.jsonl").is_file():
        history, bad = read_jsonl(folder / "history.jsonl", required=None)
        records.history = pd.DataFrame(history)
        if bad:
            records.notes.append(f"history.jsonl: {len(bad)} damaged line{'s' * (len(bad) != 1)} skipped")
    for name, (file, columns) in TABLES.items():
        table = _read_table(folder / file, columns, records.notes)
        if table is not None:
            records.tables[name] = table
    records.kind = _kind(records)
    _check_status(records)
    if ("barriers" not in records.tables and not records.points.empty
            and records.kind in ("pair", "trajectory")):
        try:
            records.tables["barriers"] = compute_barriers(records.points)
            records.notes.append("barriers.csv is missing: the barriers shown are computed from the "
                                 "complete records of points.jsonl")
        except (KeyError, ValueError) as err:
            records.notes.append(f"barriers.csv is missing and points.jsonl does not give them ({err})")
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in _NOT_ANALYSES):
        if any((child / name).is_file() for name in MARKERS):
            records.children.append(read_run_folder(child))
    return records


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the report page of ``folder`` (default ``folder/report.html``) and return its path."""
    records = read_run_folder(folder)
    out = Path(out) if out is not None else records.path / REPORT_NAME
    if out.is_dir():
        out = out / REPORT_NAME
    page = render(records, out.parent)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)  # a reader sees the old page or the new one, never half of one
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LayerLMCError(f"cannot write {out}: {err.strerror or err}") from None
    return out


def render(records: RunRecords, where: Path) -> str:
    """The page as one string; links are relative to ``where``, the page's folder."""
    figures = _FigureIds()
    sections = [_section(records, where, figures, depth=0)]
    sections += [_section(child, where, figures, depth=1) for child in records.children]
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8"))
    return template.render(
        title=f"{records.path.resolve().name}: {records.kind}", sections=sections, folder=str(records.path),
        plotly_js=jinja2.utils.markupsafe.Markup(get_plotlyjs()), version=__version__,
    )


# -- one section per run folder ---------------------------------------------------------------


def _section(records: RunRecords, where: Path, figures: _FigureIds, depth: int) -> dict:
    tables, plots = [], []
    barriers = records.tables.get("barriers")
    definition, reference = _chosen_definition(barriers)
    points = records.points
    if records.kind == "pair" and barriers is not None:
        if not points.empty and {"kind", "base"} <= set(points.columns):
            ends = points[(points["kind"] == "endpoint") & points["step"].isna()]
            ends = ends[["base", "split", "loss", "accuracy", "n"]]
            tables.append(("the two models", ends.rename(columns={"base": "model"}), False))
        tables.append((f"barriers ({definition}, reference {reference_label(definition, reference)}; loss in nats, error as a fraction)",
                       summary_table(barriers, definition, reference), True))
        plots += [interactive.full_path_figure(points) if not points.empty else None,
                  interactive.layer_barriers_figure(barriers, definition, reference),
                  interactive.cumulative_figure(barriers, definition, reference),
                  interactive.group_paths_figure(points) if not points.empty else None]
    if records.kind == "trajectory" and barriers is not None:
        tables.append((f"full-network barrier vs the largest single-group barrier (either base) per step "
                       f"({definition}, reference {reference_label(definition, reference)})",
                       trajectory_summary(barriers, definition, reference), True))
        plots.append(interactive.barrier_steps_figure(barriers, definition, reference))
        plots += [interactive.heatmap_figure(spec) for spec in heatmap_specs(barriers, definition, reference)]
        plots.append(interactive.distances_figure(records.tables.get("distances")))
    if records.kind == "multimodel":
        table = records.tables["multimodel"]
        last = table[table["step"] == table["step"].max()] if table["step"].notna().any() else table
        unit = f"{last['unit'].iloc[0]} {last['step'].iloc[0]}" if len(last) and last["step"].notna().any() else ""
        tables.append((f"barrier of the clients' average against their mean ({unit}; loss in nats, "
                       f"error as a fraction)", summary_table(last, "average", "clients"), True))
        plots += [interactive.heatmap_figure(spec) for spec in multimodel_specs(table)]
    if "robustness" in records.tables:
        plots.append(interactive.robustness_figure(records.tables["robustness"]))
    if "subspace" in records.tables:
        plots.append(interactive.subspace_figure(records.tables["subspace"]))
    for name in ("convexity", "toy summary", "clients"):
        if name in records.tables:
            tables.append((name, records.tables[name], False))
    if not records.history.empty:
        plots.insert(0, interactive.history_figure(records.history))
    run = records.run or {}
    details = {key: run[key] for key in ("status", "started", "resumed", "ended", "device", "git_sha")
               if run.get(key) is not None}
    details.update({f"version of {k}": v for k, v in (run.get("versions") or {}).items()})
    if run.get("argv"):
        details["command"] = " ".join(str(a) for a in run["argv"])
    return {
        "id": f"run-{figures.next_section()}",
        "title": _relative(records.path, where) if depth else records.path.resolve().name,
        "kind": records.kind,
        "depth": depth,
        "status": run.get("status"),
        "notes": records.notes,
        "tables": [{"title": title, "html": _table_html(table, index)} for title, table, index in tables
                   if table is not None and not table.empty],
        "figures": [_figure_html(figure, figures.next()) for figure in plots if figure is not None],
        "inputs": {str(k): _plain(v) for k, v in (run.get("inputs") or {}).items()},
        "settings": {str(k): _plain(v) for k, v in (records.config or {}).items()}
        if isinstance(records.config, dict) else {},
        "details": details,
        "files": _files(records.path, where),
        "images": [_relative(p, where) for p in sorted((records.path / "figures").glob("*.png"))],
    }


def _kind(records: RunRecords) -> str:
    tables, folder = records.tables, records.path
    if (folder / "history.jsonl").is_file():
        return "federated run" if "clients" in tables else "training run"
    if "multimodel" in tables:
        return "multimodel"
    if "robustness" in tables:
        return "robustness"
    if "subspace" in tables:
        return "subspace"
    if tables.keys() & {"cuts", "convexity", "toy paths", "toy summary"}:
        return "theory"
    points, barriers = records.points, tables.get("barriers")
    for frame in (barriers, points):
        if frame is not None and not frame.empty and "step" in frame and frame["step"].notna().any():
            return "trajectory"
    if not points.empty and "direction" in points and (points["direction"] == "random").any():
        return "robustness"
    return "pair"


def _check_status(records: RunRecords) -> None:
    run, folder = records.run, records.path
    if run is None and (folder / "points.jsonl").is_file():
        records.notes.append("run.json is missing: the run's inputs and status are unknown")
    status = (run or {}).get("status")
    if status and status != "complete":
        records.notes.append(f"this run is {status}, not complete: the page shows what it wrote so far; "
                             f"rerun the same command to finish it")


def _chosen_definition(barriers: pd.DataFrame | None) -> tuple[str, str]:
    """midpoint/models, the paper's, when the table has it; else its first definition."""
    if barriers is None or barriers.empty:
        return "midpoint", "models"
    pairs = list(dict.fromkeys(zip(barriers["definition"], barriers["reference"])))
    return ("midpoint", "models") if ("midpoint", "models") in pairs else pairs[0]


# -- reading, tolerant of damage ----------------------------------------------------------------


def _read_mapping(path: Path, parse, errors: tuple, unknown: str, notes: list[str]) -> dict | None:
    """``run.json`` or ``config.yaml``; a damaged one is named in ``notes`` (saying what is
    ``unknown`` then) instead of failing the page."""
    if not path.is_file():
        return None
    try:
        value = parse(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    except (OSError, UnicodeDecodeError, *errors) as err:
        notes.append(f"{path.name} could not be read ({type(err).__name__}): {unknown}")
        return None


def _read_table(path: Path, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame | None:
    """A CSV table without its damaged lines (a torn last line, a row with too many cells)."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        notes.append(f"{path.name} could not be read ({type(err).__name__}); it is not shown")
        return None
    skipped = 0
    if text and not text.endswith("\n"):  # a writer killed mid-line: that line is incomplete
        text, skipped = text[: text.rfind("\n") + 1], 1
    bad: list = []
    try:
        table = pd.read_csv(io.StringIO(text), engine="python", on_bad_lines=bad.append)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        notes.append(f"{path.name} could not be parsed ({' '.join(str(err).split())}); it is not shown")
        return None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        notes.append(f"{path.name} lacks the column{'s' * (len(missing) != 1)} {', '.join(missing)}; "
                     f"it is not shown")
        return None
    skipped += len(bad)
    if skipped:
        notes.append(f"{path.name}: {skipped} damaged line{'s' * (skipped != 1)} skipped; "
                     f"the page shows its {len(table)} complete rows")
    return table


# -- HTML pieces ----------------------------------------------------------------------------------


class _FigureIds:
    def __init__(self) -> None:
        self.figures = self.sections = 0

    def next(self) -> str:
        self.figures += 1
        return f"figure-{self.figures}"

    def next_section(self) -> int:
        self.sections += 1
        return self.sections


def _figure_html(figure, div_id: str) -> jinja2.utils.markupsafe.Markup:
    text = plotly.io.to_html(figure, include_plotlyjs=False, full_html=False, div_id=div_id,
                             config={"displaylogo": False, "responsive": True})
    return jinja2.utils.markupsafe.Markup(text)


def _table_html(table: pd.DataFrame, index: bool) -> jinja2.utils.markupsafe.Markup:
    table = table.copy()
    table.columns.name = None  # the pivots' axis names would take a header row of their own
    table.index.name = None
    text = table.to_html(index=index, na_rep="", border=0, classes="records",
                         float_format=lambda v: f"{v:.4f}", escape=True)
    return jinja2.utils.markupsafe.Markup(text)


def _files(folder: Path, where: Path) -> list[dict]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != REPORT_NAME
             and not p.name.endswith(".tmp")]
    return [{"name": p.name, "href": _relative(p, where), "size": _size(p.stat().st_size)} for p in files]


def _relative(path: Path, where: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path.resolve(), where.resolve())).as_posix())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _plain(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


__all__ = ["REPORT_NAME", "RunRecords", "read_run_folder", "render", "write_report"]
