from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..api import barriers
from ..core.barriers import reference_label, select_barriers, summary_table, swap_note
from ..core.checkpoints import check_pair, load_state_dict, reorder_like
from ..core.groups import layer_groups, tied_keys
from ..core.options import settings_of
from ..core.records import RunDir
from ..specs import build_data, build_model, parse_kwargs
from .options import (
    align_options,
    data_options,
    preload_plots,
    eval_options,
    executor_options,
    group_options,
    model_options,
    path_options,
    print_table,
    study_alignment,
    study_evaluation,
    study_paths,
)


@click.command("barriers")
@click.argument("checkpoint_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("checkpoint_b", metavar="B", type=click.Path(path_type=Path))
@model_options(required=False)
@data_options()
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder; rerunning with the same folder evaluates only what is missing.")
@path_options(alphas_default="0:1:11")
@eval_options()
@click.option("--extrapolate", is_flag=True, help="Allow alphas outside [0, 1].")
@align_options
@executor_options("the cells (the endpoints, then each path)")
def barriers_command(checkpoint_a, checkpoint_b, model_spec, model_args, data_spec, data_args, out,
                     extrapolate, executor, address, **options) -> None:
    """Full-network, layer-wise and cumulative barriers between checkpoints A and B.

    --model may be left out when A is a Hugging Face model folder (it then is hf:A).

    \b
    Examples:
      layerlmc barriers A.pt B.pt --model my_models.py:make_net \\
          --data my_data.py:make_splits --out runs/ab --cumulative shallow --cumulative deep
      layerlmc barriers pythia_a/ pythia_b/ --data hf-text --data-arg tokenizer=pythia_a --out runs/hf
      layerlmc barriers A.pt B.pt --model net.py:make --data data.py:splits --out runs/ab \\
          --cumulative shallow --executor ray --address ray://head:10001
      layerlmc barriers A.pt B.pt --model resnet20 --data fmnist --align weight \\
          --cumulative shallow --out runs/ab-aligned
    """
    if model_spec is None:
        from ..hf import is_hf_folder

        if not is_hf_folder(checkpoint_a):
            raise click.UsageError("Missing option '--model' (needed unless A is a Hugging Face model folder).")
        model_spec = f"hf:{checkpoint_a}"
    model_kwargs = parse_kwargs(model_args, "--model-arg")
    data_kwargs = parse_kwargs(data_args, "--data-arg")
    paths, evaluation = study_paths(options, extrapolate=extrapolate), study_evaluation(options)
    alignment = study_alignment(options)
    config = {"a": str(checkpoint_a), "b": str(checkpoint_b), "model": model_spec, "model_args": model_kwargs,
              "data": data_spec, "data_args": data_kwargs, **settings_of(paths, evaluation, alignment),
              "plots": options["plots"]}
    if options["plots"]:
        preload_plots()
    model = build_model(model_spec, model_kwargs)
    a, b = load_state_dict(checkpoint_a), load_state_dict(checkpoint_b)
    data = build_data(data_spec, data_kwargs)
    table = barriers(model, a, b, data, paths=paths, evaluation=evaluation, alignment=alignment,
                     out=out, config=config,
                     executor=executor, address=address, plots=options["plots"])
    report(table, out, paths.definitions, paths.references, options["plots"])


def report(table: pd.DataFrame, out: Path, definitions, references, plots: bool = True) -> None:
    definition, reference = definitions[0], references[0]
    endpoints = [r for r in RunDir(out).read_points(repair=False) if r["kind"] == "endpoint" and r["step"] is None]
    for record in sorted(endpoints, key=lambda r: r["base"]):
        click.echo(f"model {record['base']}: {record['split']:>6s} loss {record['loss']:.4f}  "
                   f"accuracy {record['accuracy']:.4f}  (n={record['n']:,})")
    print_table(
        summary_table(table, definition, reference),
        f"barriers ({definition}, reference: {reference_label(definition, reference)}; loss in "
        "nats, error as a fraction):",
        swap_note(select_barriers(table, definition, reference), definition, reference),
    )
    click.echo("")
    click.echo(f"records:  {out / 'points.jsonl'}")
    click.echo(f"barriers: {out / 'barriers.csv'}")
    if (out / "alignment.json").exists():
        click.echo(f"aligned:  {out / 'permutations.safetensors'} ({out / 'alignment.json'})")
    for figure in sorted((out / "figures").glob("*.png")) if plots else ():
        click.echo(f"figure:   {figure}")


@click.command("groups")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@model_options(required=False)
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
