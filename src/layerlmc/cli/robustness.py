from __future__ import annotations

import math
from pathlib import Path

import click
import pandas as pd

from ..analyses.robustness import robustness_summary
from ..api import robustness
from ..core.options import settings_of
from ..specs import build_data, build_model
from .options import (
    align_options,
    eval_options,
    executor_options,
    group_options,
    source_options,
    study_alignment,
    study_evaluation,
)
from .source import resolve_source, split_list


@click.command("robustness")
@click.argument("source", type=str)
@source_options("Analysis folder [default: SOURCE/robustness for a training run].",
                every_default=None, files=True)
@group_options
@click.option("--per-tensor", is_flag=True,
              help="One group per tensor, each weight with its bias (X.weight + X.bias, "
                   "X_weight + X_bias), as in the paper's ViT study.")
@click.option("--layers", multiple=True, metavar="NAMES",
              help="Only these groups (comma-separated; default all).")
@click.option("--bases", multiple=True, default=("a,b",), show_default=True,
              help="Which model moves: base a towards b, base b towards a.")
@click.option("--samples", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random directions per step, group and base.")
@click.option("--alphas", default="0,0.5,1", show_default=True,
              help="Step fractions from the base (0 = the base, 1 = a full step), a list or a "
                   "range start:stop:count.")
@click.option("--at", type=float, default=0.5, show_default=True,
              help="Step fraction shown in the heatmaps and the summary (one of --alphas).")
@eval_options(max_examples_default=None)
@align_options
@executor_options("the cells (per step: each averaging path, each group's random directions)")
def robustness_command(source, source_b, pair, model_spec, model_args, data_spec, data_args, out,
                       every, steps, allow_missing, unit, scheme, patterns, per_tensor, layers,
                       bases, samples, alphas, at, executor, address, **options) -> None:
    """Is the averaging direction special? Each group moved towards the other model vs along
    random directions of the same norm (PAPER.md §4.1).

    For each layer group and base, the group moves a step fraction t towards the other model's
    group (the averaging direction) and, --samples times, the same distance ‖b_g − a_g‖ along a
    seeded Gaussian direction (--seed); all other tensors stay at the base.

    SOURCE is a training run folder (from `layerlmc train`; runs chosen with --pair), a folder
    or glob of model a's checkpoints with --b for model b's, or a checkpoint file with --b
    another (a single pair). Of a run or folders, only the last common step is analysed unless
    --every or --steps says otherwise. Rerunning continues an interrupted analysis.

    \b
    Examples:
      layerlmc robustness runs/pair_fmnist_cnn --samples 5
      layerlmc robustness runs/pair_fmnist_cnn --every 5 --alphas 0:1:11 --at 1
      layerlmc robustness A.pt --b B.pt --model net.py:make --data data.py:splits --out runs/rob
      layerlmc robustness vit_a.pt --b vit_b.pt --model vit.py:make --data cifar.py:splits \\
          --per-tensor --max-examples 1024 --out runs/vit_rob
    """
    src = resolve_source(source, source_b, pair, model_spec, model_args, data_spec, data_args,
                         out, steps, default_out="robustness", files=True)
    unit = unit or src.unit
    kwargs = {
        "samples": samples, "alphas": alphas, "at": at, "bases": split_list(bases),
        "groups": scheme, "patterns": list(patterns), "layers": split_list(layers) or None,
        "per_tensor": per_tensor,
    }
    evaluation = study_evaluation(options)
    alignment = study_alignment(options)
    if not src.single_pair:
        kwargs.update(unit=unit, every=every, steps=src.steps, allow_missing=allow_missing)
    config = {"source": str(source), "b": source_b, "pair": pair, "model": src.model_spec,
              "model_args": src.model_kwargs, "data": src.data_spec, "data_args": src.data_kwargs,
              "every": every, "steps": src.steps, "unit": unit, **kwargs,
              **settings_of(evaluation, alignment), "plots": options["plots"]}
    model = build_model(src.model_spec, src.model_kwargs)
    data = build_data(src.data_spec, src.data_kwargs)
    table = robustness(model, src.a, src.b, data, src.out, config=config, executor=executor,
                       address=address, evaluation=evaluation, alignment=alignment, plots=options["plots"], **kwargs)
    report_robustness(table, src.out, at, options["plots"])


def report_robustness(table: pd.DataFrame, out: Path, at: float, plots: bool = True) -> None:
    """Per split and base: the loss with each group moved ``at`` of the way along the averaging
    direction and along the random ones, and which is higher; then the output files."""
    summary = robustness_summary(table, at, "loss")
    if summary.empty:
        click.echo("(no groups)")
    units = table["unit"].dropna() if "unit" in table else pd.Series(dtype=object)
    unit = str(units.iloc[0]) if len(units) else "step"
    for (split, base), rows in summary.groupby(["split", "base"], sort=False):
        step = rows["step"].iloc[0]
        where = f" at {unit} {step}" if step is not None and not pd.isna(step) else ""
        click.echo(f"{split} loss, base {base}{where}: each group moved {at:g} of the way "
                   f"(the base model: {_number(rows['base_value'].iloc[0])})")
        shown = pd.DataFrame({
            "group": rows["group"],
            "averaging": rows["average"].map(_number),
            "random (mean ± std)": [
                f"{_number(m)} ± {_number(s)}" for m, s in zip(rows["random_mean"],
                                                               rows["random_std"])],
            "higher": rows["higher"],
        })
        click.echo(shown.to_string(index=False))
        click.echo("")
    click.echo(f"records:    {out / 'points.jsonl'}")
    click.echo(f"table:      {out / 'robustness.csv'}")
    figures = sorted((out / "figures").glob("*.png")) if plots else []
    if figures:
        click.echo(f"figures:    {len(figures)} PNG (heatmaps also PDF) files in {out / 'figures'}")


def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if math.isfinite(value) else f"{value}!"
