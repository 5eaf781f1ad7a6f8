from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
import yaml

from ..analyses import find_checkpoints, trajectory
from ..barriers import compute_barriers, trajectory_summary
from ..errors import LayerLMCError
from ..results import RunDir
from ..specs import build_data, build_model, parse_kwargs
from .options import analysis_kwargs, data_options, eval_options, model_options, path_options, print_table, split_list


def is_training_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


@click.command("trajectory")
@click.argument("source", type=str)
@click.option("--b", "source_b", default=None, metavar="DIR|GLOB",
              help="Checkpoints of b when SOURCE is a folder or glob of a's checkpoints.")
@click.option("--pair", default="a,b", show_default=True, help="Which two runs of a training run to compare.")
@model_options(required=False)
@data_options(required=False)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Analysis folder [default: SOURCE/analysis for a training run].")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Analyse every N-th common step (the last one always).")
@click.option("--steps", default=None, help="Analyse exactly these steps (comma-separated).")
@click.option("--allow-missing", is_flag=True, help="Analyse the common steps when some have no partner.")
@click.option("--unit", default="epoch", show_default=True, type=click.Choice(["epoch", "round", "iter", "step"]))
@path_options(alphas_default="0,0.5,1")
@eval_options(max_examples_default=None)
def trajectory_command(source, source_b, pair, model_spec, model_args, data_spec, data_args, out, every, steps,
                       allow_missing, unit, **options) -> None:
    """Full, layer-wise and cumulative barriers, and layer distances, at every step of a pair.

    SOURCE is a training run folder (from `layerlmc train`), or a folder or glob of model a's
    checkpoints with --b for model b's (matched by the last number in each file name). Rerunning
    continues an interrupted analysis.

    \b
    Examples:
      layerlmc trajectory runs/pair_fmnist_cnn --every 2 --cumulative shallow --cumulative deep
      layerlmc trajectory 'ckpts/run0/*.pt' --b 'ckpts/run1/*.pt' --model net.py:make --data data.py:splits --out runs/t
    """
    folder = Path(source)
    if is_training_run(folder):
        if source_b is not None:
            raise LayerLMCError(f"{source} is a training run; choose its runs with --pair, not --b")
        trained = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        roles = split_list((pair,))
        if len(roles) != 2:
            raise LayerLMCError(f"--pair needs two run names such as a,b; got '{pair}'")
        dirs = [folder / "checkpoints" / role for role in roles]
        for role, directory in zip(roles, dirs):
            if not directory.is_dir():
                present = sorted(p.name for p in (folder / "checkpoints").iterdir())
                raise LayerLMCError(f"{folder} has no run '{role}' (runs: {', '.join(present)})")
        a_ckpts, b_ckpts = (find_checkpoints(d) for d in dirs)
        model_spec = model_spec or trained.get("model", {}).get("name")
        model_kwargs = parse_kwargs(model_args) if model_args else trained.get("model", {}).get("args", {})
        data_spec = data_spec or trained.get("data", {}).get("name")
        data_kwargs = parse_kwargs(data_args) if data_args else trained.get("data", {}).get("args", {})
        out = out or folder / "analysis"
    else:
        if source_b is None:
            raise LayerLMCError(f"{source} is not a training run folder; give b's checkpoints with --b")
        for flag, value in (("--model", model_spec), ("--data", data_spec), ("--out", out)):
            if value is None:
                raise LayerLMCError(f"{flag} is needed when SOURCE is a folder or glob of checkpoints")
        a_ckpts, b_ckpts = find_checkpoints(source), find_checkpoints(source_b)
        model_kwargs, data_kwargs = parse_kwargs(model_args), parse_kwargs(data_args)
    kwargs = analysis_kwargs(options)
    try:
        chosen_steps = [int(s) for s in split_list((steps,))] if steps else None
    except ValueError:
        raise LayerLMCError(f"--steps takes integers, e.g. 0,10,20; got '{steps}'") from None
    config = {"source": str(source), "b": source_b, "pair": pair, "model": model_spec, "model_args": model_kwargs,
              "data": data_spec, "data_args": data_kwargs, "every": every, "steps": chosen_steps,
              "unit": unit, **kwargs}
    model = build_model(model_spec, model_kwargs)
    data = build_data(data_spec, data_kwargs)
    table, _ = trajectory(model, a_ckpts, b_ckpts, data, out, unit=unit, every=every, steps=chosen_steps,
                          allow_missing=allow_missing, config=config, **kwargs)
    report_trajectory(table, Path(out), kwargs["definitions"][0], kwargs["references"][0])


def report_trajectory(table: pd.DataFrame, out: Path, definition: str, reference: str) -> None:
    print_table(trajectory_summary(table, definition, reference),
                f"full-network barrier vs the largest single-group barrier (either base) per step "
                f"({definition}, reference: {reference}):")
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
@click.option("--definition", default="midpoint", show_default=True)
@click.option("--reference", default="models", show_default=True)
def plot_command(folder: Path, definition: str, reference: str) -> None:
    """Draw the figures of an analysis from its records only (no model is loaded).

    FOLDER is an analysis folder (with barriers.csv / points.jsonl) or a training run whose
    analysis/ holds them.
    """
    from ..plots_trajectory import plot_trajectory

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
