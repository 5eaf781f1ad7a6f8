from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..api import trajectory
from ..core.barriers import (
    compute_barriers,
    reference_label,
    select_barriers,
    swap_note,
    trajectory_summary,
)
from ..core.options import settings_of
from ..core.records import RunDir
from ..errors import LayerLMCError
from ..specs import build_data, build_model
from .options import (
    REFERENCE_HELP,
    align_options,
    align_to_option,
    eval_options,
    executor_options,
    path_options,
    print_table,
    source_options,
    study_alignment,
    study_evaluation,
    study_paths,
)
from .source import resolve_source


@click.command("trajectory")
@click.argument("source", type=str)
@source_options("Analysis folder [default: SOURCE/analysis for a training run].")
@path_options(alphas_default="0,0.5,1")
@eval_options(max_examples_default=None)
@align_options
@align_to_option
@executor_options("the (step, path) cells")
def trajectory_command(source, source_b, pair, model_spec, model_args, data_spec, data_args, out, every, steps,
                       allow_missing, unit, executor, address, **options) -> None:
    """Full, layer-wise and cumulative barriers, and layer distances, at every step of a pair.

    SOURCE is a training run folder (from `layerlmc train`), or a folder or glob of model a's
    checkpoints with --b for model b's (matched by the last number in each file name). Rerunning
    continues an interrupted analysis.

    \b
    Examples:
      layerlmc trajectory runs/pair_fmnist_cnn --every 2 --cumulative shallow --cumulative deep
      layerlmc trajectory 'ckpts/run0/*.pt' --b 'ckpts/run1/*.pt' --model net.py:make --data data.py:splits --out runs/t
      layerlmc trajectory runs/pair_fmnist_cnn --executor ray --address ray://head:10001
    """
    src = resolve_source(source, source_b, pair, model_spec, model_args, data_spec, data_args,
                         out, steps, default_out="analysis")
    unit = unit or src.unit
    paths, evaluation = study_paths(options), study_evaluation(options)
    alignment = study_alignment(options)
    config = {"source": str(source), "b": source_b, "pair": pair, "model": src.model_spec,
              "model_args": src.model_kwargs, "data": src.data_spec, "data_args": src.data_kwargs,
              "every": every, "steps": src.steps, "unit": unit,
              **settings_of(paths, evaluation, alignment),
              "plots": options["plots"]}
    model = build_model(src.model_spec, src.model_kwargs)
    data = build_data(src.data_spec, src.data_kwargs)
    table, _ = trajectory(model, src.a, src.b, data, src.out, unit=unit, every=every,
                          steps=src.steps, allow_missing=allow_missing, config=config,
                          executor=executor, address=address, paths=paths,
                          evaluation=evaluation, alignment=alignment, plots=options["plots"])
    report_trajectory(table, src.out, paths.definition, paths.reference)


def report_trajectory(table: pd.DataFrame, out: Path, definition: str, reference: str) -> None:
    print_table(trajectory_summary(table, definition, reference),
                f"full-network barrier vs the largest single-group barrier (either base) per step "
                f"({definition}, reference: {reference_label(definition, reference)}):",
                swap_note(select_barriers(table, definition, reference), definition, reference))
    click.echo("")
    click.echo(f"records:   {out / 'points.jsonl'}")
    click.echo(f"barriers:  {out / 'barriers.csv'}")
    click.echo(f"distances: {out / 'distances.csv'}")
    figures = sorted((out / "figures").glob("*.png"))
    if figures:
        click.echo(f"figures:   {len(figures)} PNG (and PDF) files in {out / 'figures'}")


def records_folder(folder: Path) -> Path:
    for candidate in (folder, folder / "analysis"):
        if (candidate / "barriers.csv").is_file() or (candidate / "points.jsonl").is_file():
            return candidate
    raise LayerLMCError(f"no records in {folder} (nor in {folder / 'analysis'}): run `layerlmc trajectory` first")


@click.command("plot")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--definition", default="midpoint", show_default=True,
              help="The barriers drawn: midpoint or max.")
@click.option("--reference", default="models", show_default=True, help=REFERENCE_HELP)
def plot_command(folder: Path, definition: str, reference: str) -> None:
    """Draw the figures of an analysis from its records only (no model is loaded).

    FOLDER is an analysis folder (with barriers.csv / points.jsonl) or a training run whose
    analysis/ holds them.
    """
    from ..plots.trajectory import plot_trajectory

    records = records_folder(folder)
    run = RunDir(records)
    if run.barriers_file.is_file():
        table = pd.read_csv(run.barriers_file)
    else:
        table = compute_barriers(pd.DataFrame(run.read_points(repair=False)), (definition,), (reference,))
    distances_file = records / "distances.csv"
    distances = pd.read_csv(distances_file) if distances_file.is_file() else None
    files = plot_trajectory(table, distances, run.figures, definition, reference)
    for path in files:
        click.echo(f"figure: {path}")
    if not files:
        click.echo(f"no figures: {records} holds no {definition}/{reference} barriers over steps")
