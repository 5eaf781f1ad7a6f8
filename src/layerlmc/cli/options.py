"""Options shared by the analysis commands, and their translation into library arguments."""

from __future__ import annotations

import math
from collections.abc import Callable

import click
import pandas as pd

from ..layers import SCHEMES
from ..specs import parse_kwargs


def split_list(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma-separated lists: ``--bases a,b``."""
    return list(dict.fromkeys(item.strip() for value in values for item in value.split(",") if item.strip()))


def _stack(*decorators: Callable) -> Callable:
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def model_options(required: bool = True) -> Callable:
    return _stack(
        click.option("--model", "model_spec", required=required, default=None, metavar="SPEC",
                     help="A built-in model (layerlmc ls models), FILE.py:FUNC or package.module:FUNC "
                          "returning an nn.Module."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the model function (repeatable; YAML values)."),
    )


def data_options(required: bool = True) -> Callable:
    return _stack(
        click.option("--data", "data_spec", required=required, default=None, metavar="SPEC",
                     help="A built-in dataset (layerlmc ls datasets) or FILE.py:FUNC returning a dict of "
                          "splits, each an (inputs, labels) pair or a torch Dataset."),
        click.option("--data-arg", "data_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the data function (repeatable)."),
    )


def group_options(func):
    return _stack(
        click.option("--groups", "scheme", default="module", show_default=True, type=click.Choice(SCHEMES),
                     help="How state-dict keys form layer groups."),
        click.option("--pattern", "patterns", multiple=True, metavar="[NAME=]PATTERN",
                     help="Pattern of the regex/glob schemes (one group each; repeatable), or the "
                          "block scheme's regex with one capture group."),
    )(func)


def path_options(alphas_default: str) -> Callable:
    return _stack(
        group_options,
        click.option("--layers", multiple=True, metavar="NAMES",
                     help="Only these groups get single-group paths (comma-separated; default all)."),
        click.option("--layerwise/--no-layerwise", default=True, show_default=True,
                     help="Compute single-group barriers."),
        click.option("--bases", multiple=True, default=("a,b",), show_default=True,
                     help="Endpoint(s) the non-averaged groups come from."),
        click.option("--cumulative", multiple=True, metavar="ORDER",
                     help="Cumulative barriers: shallow, deep, random, minimal, window:K or a "
                          "comma-separated list of groups (repeatable)."),
        click.option("--alphas", default=alphas_default, show_default=True,
                     help="Alpha grid of the full path: a list 0,0.5,1 or a range start:stop:count."),
        click.option("--layer-alphas", default=None,
                     help="Alpha grid of group and cumulative paths [default: what the definitions need]."),
        click.option("--definition", "definitions", multiple=True, default=("midpoint",), show_default=True,
                     help="Barrier definition(s): midpoint, max."),
        click.option("--reference", "references", multiple=True, default=("models",), show_default=True,
                     help="Reference value(s): models (the full endpoints) or path (the path's own ends)."),
    )


def eval_options(max_examples_default: int | None = None) -> Callable:
    return _stack(
        click.option("--splits", multiple=True, help="Splits to evaluate (default: all the data has)."),
        click.option("--max-examples", type=click.IntRange(min=1), default=max_examples_default,
                     show_default=max_examples_default is not None,
                     help="Evaluate a fixed, seeded subset of N examples per split."),
        click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the random order and of the --max-examples subset."),
        click.option("--plots/--no-plots", default=True, show_default=True),
    )


def analysis_kwargs(options: dict) -> dict:
    """Library keyword arguments (``layerlmc.barriers``, ``trajectory``) from parsed options."""
    return {
        "groups": options["scheme"], "patterns": list(options["patterns"]),
        "layers": split_list(options["layers"]) or None, "layerwise": options["layerwise"],
        "bases": split_list(options["bases"]), "cumulative": list(dict.fromkeys(options["cumulative"])),
        "alphas": options["alphas"], "layer_alphas": options["layer_alphas"],
        "definitions": split_list(options["definitions"]), "references": split_list(options["references"]),
        "splits": split_list(options["splits"]) or None, "max_examples": options["max_examples"],
        "batch_size": options["batch_size"], "device": options["device"], "seed": options["seed"],
        "plots": options["plots"],
    }


def print_table(table: pd.DataFrame, title: str) -> None:
    if table.empty:
        click.echo("(no barriers)")
        return
    flagged = table.map(lambda v: isinstance(v, float) and not math.isfinite(v)).to_numpy().any()
    shown = table.map(lambda v: (f"{v:+.4f}" if math.isfinite(v) else f"{v}!") if isinstance(v, float) else str(v))
    shown.index.name = None
    shown.columns.name = None
    click.echo(title)
    click.echo(shown.to_string())
    if flagged:
        click.echo("! marks a non-finite value (the loss diverged at that point)")


__all__ = ["analysis_kwargs", "data_options", "eval_options", "group_options", "model_options",
           "parse_kwargs", "path_options", "print_table", "split_list"]
