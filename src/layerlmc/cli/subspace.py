"""``layerlmc subspace``: noise in the span of the weights, its null space and the averaging
direction, for a pair of a training run."""

from __future__ import annotations

import math
from pathlib import Path

import click
import pandas as pd
import yaml

from ..analyses.subspace import (
    COEFFICIENTS,
    DIRECTIONS,
    SPACINGS,
    SPANS,
    summarise,
    trajectory_snapshots,
)
from ..api import subspace
from ..errors import LayerLMCError
from ..evaluate.options import EvalOptions
from ..specs import build_data, build_model
from .options import executor_options, group_options, precision_option
from .source import is_training_run, resolve_source, split_list


@click.command("subspace")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--sigma", "sigmas", default="0.001:10:100", show_default=True, metavar="MIN:MAX:N",
              help="Noise magnitudes of the full network: N values from MIN to MAX (or a list "
                   "0.1,1,5).")
@click.option("--layer-sigma", "layer_sigmas", default=None, metavar="MIN:MAX:N",
              help="Noise magnitudes per layer group [default: --sigma; the notebooks used "
                   "0.001:5:100].")
@click.option("--spacing", type=click.Choice(SPACINGS), default="grid", show_default=True,
              help="grid: evenly spaced σ; uniform: N seeded draws from [MIN, MAX] (the "
                   "notebooks).")
@click.option("--pair", default="a,b", show_default=True, help="The two runs of the training run.")
@click.option("--step", type=int, default=None,
              help="Analyse the checkpoints of this epoch [default: the last one].")
@click.option("--span", type=click.Choice(SPANS), default="final", show_default=True,
              help="final: span of the two final weight vectors (the published plots); "
                   "trajectory: span of every epoch's weights of both runs.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="--span trajectory: every N-th epoch's checkpoint (the last always).")
@click.option("--with-init", is_flag=True,
              help="--span trajectory: include the initialization (epoch 0).")
@click.option("--directions", multiple=True, default=("span,nullspace,average",), show_default=True,
              help=f"Direction types: {', '.join(DIRECTIONS)} (span is the --span subspace).")
@click.option("--samples", type=int, default=1, show_default=True,
              help="Random directions per σ value.")
@click.option("--per-layer", is_flag=True, help="Also perturb each layer group alone.")
@click.option("--full/--no-full", default=True, show_default=True,
              help="Perturb the full network.")
@group_options
@click.option("--layers", multiple=True, metavar="NAMES",
              help="With --per-layer, only these groups (comma-separated).")
@click.option("--coefficients", type=click.Choice(COEFFICIENTS), default="uniform",
              show_default=True,
              help="Span directions: coefficients ~ Uniform[0,1) per basis vector (the notebooks) "
                   "or Gaussian (uniform on the sphere of the span).")
@click.option("--renormalise", is_flag=True,
              help="Per layer, scale the averaging direction to unit norm (the notebooks did not).")
@click.option("--splits", multiple=True,
              help="Splits to evaluate [default: the training run's test split].")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Evaluate a fixed, seeded subset of N examples per split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random directions (and of --spacing uniform, --max-examples).")
@precision_option
@click.option("--max-memory", type=float, default=2.0, show_default=True, metavar="GIB",
              help="Largest snapshot matrix (parameters × snapshots × 4 bytes) allowed, in GiB.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Analysis folder [default: SOURCE/subspace, or SOURCE/subspace_trajectory].")
@click.option("--plots/--no-plots", default=True, show_default=True)
@executor_options("the cells (the clean networks, then each group, direction and σ)")
def subspace_command(source: Path, sigmas, layer_sigmas, spacing, pair, step, span, every,
                     with_init, directions, samples, per_layer, full, scheme, patterns, layers,
                     coefficients, renormalise, splits, max_examples, batch_size, device, seed,
                     precision, max_memory, out, plots, executor, address) -> None:
    """Loss of each network of a pair moved by σ·v, v a random unit direction in the span of the
    weights, in its null space, or the averaging direction (PAPER.md §4.2; Sec. 5.2).

    SOURCE is a training run folder (from `layerlmc train`); model and data come from its
    config. Each network is perturbed on its own; network a moves along +d̂ and b along −d̂ of
    the averaging direction d̂ = (θ_a − θ_b)/‖θ_a − θ_b‖. Rerunning continues an interrupted
    analysis.

    \b
    Examples:
      layerlmc train src/layerlmc/configs/subspace_synthetic.yaml
      layerlmc subspace runs/subspace_synthetic --per-layer --layer-sigma 0.001:5:100
      layerlmc subspace runs/subspace_synthetic --span trajectory --every 5 --samples 3
      layerlmc subspace runs/pair --sigma 0:2:21 --coefficients gaussian --max-examples 2000
      layerlmc subspace runs/subspace_synthetic --per-layer --executor ray --address ray://head:10001
    """
    if not is_training_run(Path(source)):
        raise LayerLMCError(
            f"{source} is not a training run folder (config.yaml and checkpoints/); for other "
            "checkpoints call layerlmc.analyses.subspace.subspace() from Python"
        )
    src = resolve_source(str(source), None, pair, None, (), None, (), out, None,
                         default_out="subspace" if span == "final" else f"subspace_{span}")
    roles, runs, unit = split_list((pair,)), [src.a, src.b], src.unit
    common = sorted(set(runs[0]) & set(runs[1]))
    if not common:
        raise LayerLMCError(f"runs {roles[0]} and {roles[1]} of {source} have no {unit} in common")
    if step is None:
        step = common[-1]
    elif step not in common:
        raise LayerLMCError(f"no checkpoints of both runs for {unit} {step}; available: "
                            f"{common[0]}..{common[-1]}")
    snapshots = (trajectory_snapshots(runs[0], runs[1], step, every, with_init)
                 if span == "trajectory" else None)
    trained = yaml.safe_load((Path(source) / "config.yaml").read_text()) or {}
    chosen_splits = split_list(splits) or [trained.get("data", {}).get("test_split", "test")]
    out = src.out
    model = build_model(src.model_spec, src.model_kwargs)
    data = build_data(src.data_spec, src.data_kwargs)
    chosen_directions = split_list(directions)
    config = {
        "source": str(source), "pair": pair, "step": step, "span": span, "every": every,
        "with_init": with_init, "directions": chosen_directions, "sigmas": sigmas,
        "layer_sigmas": layer_sigmas, "spacing": spacing, "samples": samples,
        "per_layer": per_layer,
        "full": full, "groups": scheme, "patterns": list(patterns), "layers": split_list(layers),
        "coefficients": coefficients, "renormalise": renormalise, "splits": chosen_splits,
        "max_examples": max_examples, "batch_size": batch_size, "device": device, "seed": seed,
        "precision": precision, "max_memory_gib": max_memory,
    }
    table = subspace(
        model, runs[0][step], runs[1][step], data, out, span=span, snapshots=snapshots,
        directions=chosen_directions, sigmas=sigmas, layer_sigmas=layer_sigmas, spacing=spacing,
        samples=samples, full=full, per_layer=per_layer, groups=scheme, patterns=list(patterns),
        layers=split_list(layers) or None, coefficients=coefficients, renormalise=renormalise,
        evaluation=EvalOptions(splits=chosen_splits, max_examples=max_examples,
                               batch_size=batch_size, device=device, seed=seed,
                               precision=precision),
        max_memory=int(max_memory * 1024**3), step=step,
        unit=unit, executor=executor, address=address, plots=plots, config=config,
    )
    report_subspace(table, Path(out), roles)


def report_subspace(table: pd.DataFrame, out: Path, roles: list[str] | None = None) -> None:
    """The summary table and the output paths."""
    summary = summarise(table)
    if summary.empty:
        click.echo("(no points)")
    else:
        split = "test" if "test" in set(table["split"]) else table["split"].iloc[0]
        if roles:
            summary["network"] = summary["network"].map(lambda n: f"{n} ({roles[BASE[n]]})"
                                                        if roles[BASE[n]] != n else n)
        shown = summary.map(_cell)
        click.echo(f"{split} loss under noise: clean, mean over the smallest and the largest tenth "
                   "of σ values, slope d(loss)/dσ:")
        click.echo(shown.to_string(index=False))
    click.echo("")
    click.echo(f"records:  {out / 'points.jsonl'}")
    click.echo(f"table:    {out / 'subspace.csv'}")
    figures = sorted((out / "figures").glob("subspace_*.png"))
    if figures:
        names = ", ".join(p.name for p in figures[:3]) + (", ..." if len(figures) > 3 else "")
        click.echo(f"figures:  {len(figures)} PNG files in {out / 'figures'} ({names})")


BASE = {"a": 0, "b": 1}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else f"{value}!"
    return str(value)
