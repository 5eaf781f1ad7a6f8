"""Options shared by the analysis commands, and their translation into option objects."""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable
from pathlib import Path

import click
import pandas as pd

from ..core.groups import SCHEMES
from ..core.plan import PathOptions
from ..evaluate.alignment import METHODS, AlignOptions
from ..evaluate.auto import EVALUATORS
from ..evaluate.batchnorm import BN_POLICIES
from ..evaluate.options import EvalOptions
from ..evaluate.plain import LOSS_MEANS, PRECISIONS
from .source import UNITS, split_list


def _stack(*decorators: Callable) -> Callable:
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _spec_options(name: str, spec_help: str, arg_help: str, required: bool) -> Callable:
    """``--NAME SPEC`` and the repeatable ``--NAME-arg KEY=VALUE`` of a model or dataset."""
    return _stack(
        click.option(f"--{name}", f"{name}_spec", required=required, default=None, metavar="SPEC",
                     help=spec_help),
        click.option(f"--{name}-arg", f"{name}_args", multiple=True, metavar="KEY=VALUE",
                     help=arg_help),
    )


def model_options(required: bool = True) -> Callable:
    return _spec_options(
        "model", "A built-in model (layerlmc ls models), FILE.py:FUNC or package.module:FUNC "
                 "returning an nn.Module.",
        "Keyword argument for the model function (repeatable; YAML values).", required)


def data_options(required: bool = True) -> Callable:
    return _spec_options(
        "data", "A built-in dataset (layerlmc ls datasets) or FILE.py:FUNC returning a dict of "
                "splits, each an (inputs, labels) pair or a torch Dataset.",
        "Keyword argument for the data function (repeatable).", required)


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
                     help="Barrier definition(s): midpoint, or max (the largest gap over the grid; "
                          "on group and cumulative paths against the path's own ends unless "
                          "--reference models-swap)."),
        click.option("--reference", "references", multiple=True, default=("models",), show_default=True,
                     help=REFERENCE_HELP),
    )


REFERENCE_HELP = (
    "Reference value(s): models (the full endpoints a and b), path (the path's own α = 0 and 1 "
    "points), or models-swap. With --definition max, models uses path on group and cumulative "
    "paths (and their rows say reference path): their α = 1 end is a carrying b's groups, a "
    "layer swap, not b. models-swap keeps models there too: the max then includes that end, "
    "the swapped network compared with b, which measures the swap, not averaging.")


def precision_option(func):
    """--precision: the autocast dtype of every forward pass (an input of the stored numbers)."""
    return click.option(
        "--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
        help="Autocast dtype of the forward passes: fp32 (none), bf16 or fp16; lower precision "
             "changes the numbers, so a folder computed in one is not continued in another.",
    )(func)


def eval_options(max_examples_default: int | None = None) -> Callable:
    return _stack(
        click.option("--splits", multiple=True, help="Splits to evaluate (default: all the data has)."),
        click.option("--max-examples", type=click.IntRange(min=1), default=max_examples_default,
                     show_default=max_examples_default is not None,
                     help="Evaluate a fixed, seeded subset of N examples per split."),
        click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the random order, the --max-examples subset and the "
                          "--bn recompute batches."),
        click.option("--bn", type=click.Choice(BN_POLICIES), default="interpolate",
                     show_default=True,
                     help="BatchNorm running statistics at each evaluated state: interpolate "
                          "them with the weights, recompute them from training batches, use "
                          "each evaluation batch's own (batch-stats), or keep the path's base's "
                          "(keep-base). See docs/batchnorm.md."),
        click.option("--bn-batches", type=click.IntRange(min=1), default=10, show_default=True,
                     help="--bn recompute: batches to estimate the statistics from."),
        click.option("--bn-batch-size", type=click.IntRange(min=1), default=None,
                     help="--bn recompute: examples per batch [default: --batch-size]."),
        click.option("--bn-split", default="train", show_default=True,
                     help="--bn recompute: the split the batches are drawn from (seeded by "
                          "--seed)."),
        click.option("--evaluator", type=click.Choice(EVALUATORS), default="plain",
                     show_default=True,
                     help="How states are evaluated: plain, incremental (re-run only what a "
                          "changed group feeds), vmap (many small models at once) or auto. The "
                          "numbers are the same; see docs/evaluators.md."),
        precision_option,
        click.option("--loss-mean", type=click.Choice(list(LOSS_MEANS)), default="example",
                     show_default=True,
                     help="How a split's loss is averaged: per example, or as the mean of "
                          "per-batch means of --batch-size examples (the paper's code, at "
                          "--batch-size 256). They differ only when the last batch is short."),
        click.option("--plots/--no-plots", default=True, show_default=True),
    )


def align_options(func):
    """--align and its settings: permute b's hidden units onto a's before measuring."""
    return _stack(
        click.option("--align", type=click.Choice(METHODS), default="none", show_default=True,
                     help="Permute b's hidden units onto a's first: weight matching, or "
                          "activation matching on examples of the data (git re-basin). An "
                          "input: a folder computed with one alignment refuses another."),
        click.option("--align-seed", type=int, default=0, show_default=True,
                     help="Seed of weight matching's group order and of activation matching's "
                          "examples."),
        click.option("--align-rounds", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Weight matching stops after this many rounds (alignment.json says "
                          "whether it converged)."),
        click.option("--align-split", default="train", show_default=True,
                     help="--align activation: the split whose examples are compared."),
        click.option("--align-examples", type=click.IntRange(min=1), default=1000,
                     show_default=True, help="--align activation: how many examples."),
    )(func)


def align_to_option(func):
    """--align-to: over training steps, each step's own permutation or the final step's."""
    return click.option(
        "--align-to", type=click.Choice(["step", "final"]), default="step", show_default=True,
        help="--align over steps: match each step's b to its a, or apply the final step's "
             "permutation to every step.")(func)


def study_alignment(options: dict) -> AlignOptions:
    """The alignment of a study from the parsed options of :func:`align_options` (and
    :func:`align_to_option`)."""
    return AlignOptions(align=options["align"], align_seed=options["align_seed"],
                        align_rounds=options["align_rounds"], align_split=options["align_split"],
                        align_examples=options["align_examples"],
                        align_to=options.get("align_to", "step"))


def executor_options(what: str) -> Callable:
    """--executor and --address: where the independent pieces of a command run."""
    return _stack(
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help=f"Where {what} run: in this process, or as Ray tasks in parallel "
                          "(pip install 'layerlmc[ray]'; see docs/reliability.md)."),
        click.option("--address", default=None, metavar="HOST:PORT",
                     help="--executor ray: the address of a running Ray cluster, e.g. "
                          "ray://head:10001 [default: start a local Ray instance on this "
                          "machine's CPUs]."),
    )


def source_options(out_help: str, every_default: int | None = 1, files: bool = False) -> Callable:
    """Where an analysis over checkpoints takes a and b from (see :func:`~layerlmc.cli.source.resolve_source`):
    --b, --pair, the model and data, --out and the step selection. With ``files``, SOURCE and
    --b may also be two checkpoint files (a single pair)."""
    if files:
        b_meta = "FILE|DIR|GLOB"
        b_help = ("Model b's checkpoint file, or the folder or glob of its checkpoints, when "
                  "SOURCE is model a's.")
    else:
        b_meta = "DIR|GLOB"
        b_help = "Checkpoints of b when SOURCE is a folder or glob of a's checkpoints."
    every_help = "Analyse every N-th common step (the last one always)."
    if every_default is None:
        every_help += " [default: the last step only]"
    return _stack(
        click.option("--b", "source_b", default=None, metavar=b_meta, help=b_help),
        click.option("--pair", default="a,b", show_default=True,
                     help="Which two runs of a training run to compare."),
        model_options(required=False),
        data_options(required=False),
        click.option("--out", type=click.Path(path_type=Path), default=None, help=out_help),
        click.option("--every", type=click.IntRange(min=1), default=every_default,
                     show_default=every_default is not None, help=every_help),
        click.option("--steps", default=None,
                     help="Analyse exactly these steps (comma-separated)."),
        click.option("--allow-missing", is_flag=True,
                     help="Analyse the common steps when some have no partner."),
        click.option("--unit", default=None, type=click.Choice(UNITS),
                     help="What a step counts [default: the checkpoint names' prefix "
                          "(round_0003 → round), else epoch]."),
    )


def study_paths(options: dict, **fields) -> PathOptions:
    """The paths of a study from the parsed options of :func:`path_options` (and ``--seed``);
    ``fields`` are options a command adds (``extrapolate``)."""
    return PathOptions(
        groups=options["scheme"], patterns=list(options["patterns"]),
        layers=split_list(options["layers"]) or None, layerwise=options["layerwise"],
        bases=split_list(options["bases"]), cumulative=list(dict.fromkeys(options["cumulative"])),
        alphas=options["alphas"], layer_alphas=options["layer_alphas"],
        definitions=split_list(options["definitions"]),
        references=split_list(options["references"]), seed=options["seed"], **fields,
    )


def study_evaluation(options: dict) -> EvalOptions:
    """How a study evaluates, from the parsed options of :func:`eval_options`."""
    return EvalOptions(
        splits=split_list(options["splits"]) or None, max_examples=options["max_examples"],
        batch_size=options["batch_size"], device=options["device"], seed=options["seed"],
        bn=options["bn"], bn_batches=options["bn_batches"], bn_batch_size=options["bn_batch_size"],
        bn_split=options["bn_split"], evaluator=options["evaluator"],
        precision=options["precision"], loss_mean=options["loss_mean"],
    )


def print_table(table: pd.DataFrame, title: str, note: str | None = None) -> None:
    """``table`` under ``title``, values signed to 4 places; ``note``, if any, last."""
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
    if note:
        click.echo(note)


__all__ = ["align_options", "align_to_option", "data_options", "eval_options", "executor_options", "group_options", "model_options",
           "path_options", "precision_option", "print_table", "source_options", "study_alignment", "study_evaluation",
           "study_paths"]


def preload_plots(module: str = "layerlmc.plots.barriers") -> threading.Thread:
    """Import the plotting module (matplotlib, about half a second) in a background thread
    while the command loads and evaluates, so the figures at the end do not wait for it: the
    import is off the critical path. A failure here is left to the real import to report."""

    def load() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the drawing step imports it again and says why
            pass

    thread = threading.Thread(target=load, name="layerlmc-preload-plots", daemon=True)
    thread.start()
    return thread

