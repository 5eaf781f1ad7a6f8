from __future__ import annotations

import math
from pathlib import Path

import click
import pandas as pd

from ..barriers import summary_table
from ..checkpoints import check_pair, load_state_dict, reorder_like
from ..layers import SCHEMES, layer_groups, tied_keys
from ..lmc import barriers
from ..results import RunDir
from ..specs import build_data, build_model, parse_kwargs


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma-separated lists: ``--bases a,b``."""
    return list(dict.fromkeys(item.strip() for value in values for item in value.split(",") if item.strip()))


def model_options(func):
    func = click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="Keyword argument for the model function (repeatable; YAML values).")(func)
    func = click.option("--model", "model_spec", required=True, metavar="SPEC",
                        help="A built-in model (layerlmc ls models), FILE.py:FUNC or package.module:FUNC "
                             "returning an nn.Module.")(func)
    return func


def group_options(func):
    func = click.option("--pattern", "patterns", multiple=True, metavar="[NAME=]PATTERN",
                        help="Pattern of the regex/glob schemes (one group each; repeatable), or the "
                             "block scheme's regex with one capture group.")(func)
    func = click.option("--groups", "scheme", default="module", show_default=True,
                        type=click.Choice(SCHEMES), help="How state-dict keys form layer groups.")(func)
    return func


def print_table(table: pd.DataFrame, title: str) -> None:
    if table.empty:
        click.echo("(no barriers)")
        return
    flagged = table.map(lambda v: isinstance(v, float) and not math.isfinite(v)).to_numpy().any()
    shown = table.map(lambda v: f"{v:+.4f}" if isinstance(v, float) and math.isfinite(v) else f"{v}!")
    shown.index.name = None
    shown.columns.name = None
    click.echo(title)
    click.echo(shown.to_string())
    if flagged:
        click.echo("! marks a non-finite value (the loss diverged at that point)")


@click.command("barriers")
@click.argument("checkpoint_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("checkpoint_b", metavar="B", type=click.Path(path_type=Path))
@model_options
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="A built-in dataset (layerlmc ls datasets) or FILE.py:FUNC returning a dict of "
                   "splits, each an (inputs, labels) pair or a torch Dataset.")
@click.option("--data-arg", "data_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the data function (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder; rerunning with the same folder evaluates only what is missing.")
@group_options
@click.option("--layers", multiple=True, metavar="NAMES",
              help="Only these groups get single-group paths (comma-separated; default all).")
@click.option("--layerwise/--no-layerwise", default=True, show_default=True,
              help="Compute single-group barriers.")
@click.option("--bases", multiple=True, default=("a,b",), show_default=True,
              help="Endpoint(s) the non-averaged groups come from.")
@click.option("--cumulative", multiple=True, metavar="ORDER",
              help="Cumulative barriers: shallow, deep, random, minimal, window:K or a comma-separated "
                   "list of groups (repeatable).")
@click.option("--alphas", default="0:1:11", show_default=True,
              help="Alpha grid of the full path: a list 0,0.5,1 or a range start:stop:count.")
@click.option("--layer-alphas", default=None,
              help="Alpha grid of group and cumulative paths [default: what the definitions need].")
@click.option("--definition", "definitions", multiple=True, default=("midpoint",), show_default=True,
              help="Barrier definition(s): midpoint, max.")
@click.option("--reference", "references", multiple=True, default=("models",), show_default=True,
              help="Reference value(s): models (the full endpoints) or path (the path's own ends).")
@click.option("--splits", multiple=True, help="Splits to evaluate (default: all the data has).")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Evaluate a fixed, seeded subset of N examples per split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random order and of the --max-examples subset.")
@click.option("--extrapolate", is_flag=True, help="Allow alphas outside [0, 1].")
@click.option("--plots/--no-plots", default=True, show_default=True)
def barriers_command(checkpoint_a, checkpoint_b, model_spec, model_args, data_spec, data_args, out,
                     scheme, patterns, layers, layerwise, bases, cumulative, alphas, layer_alphas,
                     definitions, references, splits, max_examples, batch_size, device, seed,
                     extrapolate, plots) -> None:
    """Full-network, layer-wise and cumulative barriers between checkpoints A and B.

    \b
    Example:
      layerlmc barriers A.pt B.pt --model my_models.py:make_net \\
          --data my_data.py:make_splits --out runs/ab --cumulative shallow --cumulative deep
    """
    model_kwargs = parse_kwargs(model_args, "--model-arg")
    data_kwargs = parse_kwargs(data_args, "--data-arg")
    config = {
        "a": str(checkpoint_a), "b": str(checkpoint_b),
        "model": model_spec, "model_args": model_kwargs, "data": data_spec, "data_args": data_kwargs,
        "groups": scheme, "patterns": list(patterns), "layers": split_list(layers),
        "layerwise": layerwise, "bases": split_list(bases), "cumulative": list(dict.fromkeys(cumulative)),
        "alphas": alphas, "layer_alphas": layer_alphas,
        "definitions": split_list(definitions), "references": split_list(references),
        "splits": split_list(splits), "max_examples": max_examples, "batch_size": batch_size,
        "device": device, "seed": seed, "extrapolate": extrapolate,
    }
    model = build_model(model_spec, model_kwargs)
    a, b = load_state_dict(checkpoint_a), load_state_dict(checkpoint_b)
    data = build_data(data_spec, data_kwargs)
    table = barriers(
        model, a, b, data, groups=scheme, patterns=patterns, layers=config["layers"] or None,
        layerwise=layerwise, bases=config["bases"], cumulative=cumulative, alphas=alphas,
        layer_alphas=layer_alphas, definitions=config["definitions"], references=config["references"],
        splits=config["splits"] or None, max_examples=max_examples, batch_size=batch_size,
        device=device, seed=seed, extrapolate=extrapolate, out=out, plots=plots, config=config,
    )
    report(table, out, config["definitions"], config["references"], plots)


def report(table: pd.DataFrame, out: Path, definitions, references, plots: bool = True) -> None:
    definition, reference = definitions[0], references[0]
    endpoints = [r for r in RunDir(out).read_points(repair=False) if r["kind"] == "endpoint" and r["step"] is None]
    for record in sorted(endpoints, key=lambda r: r["base"]):
        click.echo(f"model {record['base']}: {record['split']:>6s} loss {record['loss']:.4f}  "
                   f"accuracy {record['accuracy']:.4f}  (n={record['n']:,})")
    print_table(
        summary_table(table, definition, reference),
        f"barriers ({definition}, reference: {reference}; loss in nats, error as a fraction):",
    )
    click.echo("")
    click.echo(f"records:  {out / 'points.jsonl'}")
    click.echo(f"barriers: {out / 'barriers.csv'}")
    for figure in sorted((out / "figures").glob("*.png")) if plots else ():
        click.echo(f"figure:   {figure}")


@click.command("groups")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Optional model: checks the checkpoint against it and keeps tied weights together.")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE")
@group_options
def groups_command(checkpoint, model_spec, model_args, scheme, patterns) -> None:
    """List the layer groups of a checkpoint: index, name, tensors, parameters."""
    state = load_state_dict(checkpoint)
    tied = ()
    if model_spec:
        model = build_model(model_spec, parse_kwargs(model_args, "--model-arg"))
        check_pair(state, state, model.state_dict())
        state = reorder_like(state, model.state_dict())
        tied = tied_keys(model)
    groups = layer_groups(state, scheme, patterns, tied=tied)
    rows = [
        {"index": g.index, "name": g.name, "tensors": len(g.keys), "params": g.numel(state)}
        for g in groups
    ]
    table = pd.DataFrame(rows)
    click.echo(table.to_string(index=False))
    total = int(table["params"].sum()) if rows else 0
    click.echo(f"{len(groups)} groups, {len(state)} tensors, {total:,} numbers")
    if not model_spec and checkpoint.suffix == ".safetensors":
        click.echo("(in the file's key order; pass --model to list the groups in the model's order)")
