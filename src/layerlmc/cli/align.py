"""``layerlmc align``: permute B's hidden units onto A's and save the result."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd
import torch

from ..api import align
from ..core.checkpoints import load_state_dict
from ..core.permutations import matching_distance, permutation_spec, spec_table
from ..specs import build_data, build_model, parse_kwargs
from .options import data_options, model_options


@click.command("align")
@click.argument("checkpoint_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("checkpoint_b", metavar="B", type=click.Path(path_type=Path))
@model_options(required=True)
@data_options(required=False)
@click.option("--method", type=click.Choice(["weight", "activation"]), default="weight",
              show_default=True, help="Weight matching, or activation matching on --data.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where the permuted B goes (.safetensors); the permutations and a summary go beside it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-rounds", type=click.IntRange(min=1), default=100, show_default=True,
              help="Weight matching stops after this many rounds (and says so).")
@click.option("--split", default="train", show_default=True, help="--method activation: the split.")
@click.option("--examples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="--method activation: how many examples.")
@click.option("--show-spec", is_flag=True, help="Also print the permutation groups.")
def align_command(checkpoint_a, checkpoint_b, model_spec, model_args, data_spec, data_args, method,
                  out, seed, max_rounds, split, examples, show_spec) -> None:
    """Permute the hidden units of checkpoint B onto those of A (git re-basin); the result
    computes what B computes and lies closer to A.

    \b
    Examples:
      layerlmc align A.pt B.pt --model resnet20 --out runs/ab/aligned.safetensors
      layerlmc align A.pt B.pt --model mlp --method activation --data fmnist --out b_aligned.safetensors
    """
    model = build_model(model_spec, parse_kwargs(model_args, "--model-arg"))
    data = build_data(data_spec, parse_kwargs(data_args, "--data-arg")) if data_spec else None
    a, b = load_state_dict(checkpoint_a), load_state_dict(checkpoint_b)
    aligned, matching = align(model, a, b, method=method, data=data, out=out, seed=seed,
                              max_rounds=max_rounds, split=split, examples=examples)
    spec = permutation_spec(model)
    if show_spec:
        click.echo(pd.DataFrame(spec_table(spec)).to_string(index=False))
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in matching.perms.values())
    total = sum(len(p) for p in matching.perms.values())
    status = "converged" if matching.converged else "stopped at --max-rounds without converging"
    click.echo(f"{method} matching: {len(spec)} permutation groups, {total} units, {moved} moved; "
               f"{matching.rounds} round(s), {status}")
    click.echo(f"<a, b> over the permuted tensors: {matching_distance(spec, a, b):.4f} before, "
               f"{matching_distance(spec, a, aligned):.4f} after")
    stem = out.name.removesuffix(out.suffix)
    click.echo(f"aligned b:    {out}")
    click.echo(f"permutations: {out.parent / (stem + '.permutations.safetensors')}")
