"""Full-network, layer-wise and cumulative barriers of two endpoints: the basic study.

Plan the paths (:func:`~layerlmc.core.plan.plan_paths`), evaluate their points
(:func:`~layerlmc.evaluate.points.evaluate_paths`), compute the barriers from the records
(:func:`~layerlmc.core.barriers.compute_barriers`); the other analyses are variations of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path as FilePath

import pandas as pd
import torch

from ..core.barriers import compute_barriers
from ..core.checkpoints import StateDict, check_pair, load_state_dict, reorder_like, state_digest
from ..core.options import flat_options
from ..core.plan import FULL_ALPHAS, PathOptions, plan_paths
from ..core.records import RunDir
from ..evaluate.alignment import (
    AlignOptions,
    align_pair,
    alignment_input,
    matching_summary,
    save_matching,
    write_alignment,
)
from ..evaluate.options import EvalOptions, analysis_inputs, build_evaluator
from ..evaluate.points import evaluate_paths
from .cells import evaluate_steps
from .executors import Executor, using_executor

# the module paths of 0.1 for what moved out of this module
__all__ = ["analysis_inputs", "barriers", "build_evaluator", "evaluate_paths", "plan_paths",
           "state_digest"]

@flat_options
def barriers(
    model: torch.nn.Module,
    a: StateDict | str | FilePath,
    b: StateDict | str | FilePath,
    data: Mapping[str, object],
    *,
    paths: PathOptions = PathOptions(),
    evaluation: EvalOptions = EvalOptions(),
    alignment: AlignOptions = AlignOptions(),
    out: str | FilePath | None = None,
    executor: str | Executor = "local",
    address: str | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> pd.DataFrame:
    """Full-network, layer-wise and cumulative barriers between endpoints ``a`` and ``b``.

    ``a`` and ``b`` are state dicts or checkpoint paths; ``data`` maps split names to
    ``(inputs, labels)`` tensors or torch Datasets. Returns one row per barrier with the
    columns of ``barriers.csv`` (docs/design.md §5): ``value`` is the barrier of ``metric``
    (``loss`` = mean cross-entropy per example, ``error`` = 1 − accuracy) under
    ``definition`` (``midpoint``/``max``) and ``reference`` (``models``/``path``: the one the
    row used; ``max`` of group and cumulative paths uses ``path`` when ``models`` is asked for,
    see :func:`~layerlmc.core.barriers.row_reference`).

    ``paths`` (:class:`~layerlmc.core.plan.PathOptions`) says which paths and barriers,
    ``evaluation`` (:class:`~layerlmc.evaluate.options.EvalOptions`) on what and how; each of
    their fields may also be given as a keyword of its own (``max_examples=1000``).

    ``bn`` says what the running statistics of BatchNorm layers are at each evaluated state
    (docs/batchnorm.md): ``interpolate`` (blended with the weights), ``recompute`` (estimated
    afresh from ``bn_batches`` batches of ``bn_batch_size`` examples of split ``bn_split``),
    ``batch-stats`` (each evaluation batch's own) or ``keep-base`` (the path's base's; ``a``'s
    on the full path). The policy applies to the endpoints too.

    With ``out``, the run folder gets ``config.yaml``, ``run.json``, ``points.jsonl``,
    ``barriers.csv`` (and ``figures/``, which :func:`layerlmc.barriers` draws); calling again
    with the same ``out`` evaluates only points that are not stored yet. A folder computed with
    another BatchNorm policy is refused.

    ``evaluator`` (``plain``, ``incremental``, ``vmap``, ``auto``; docs/evaluators.md) changes
    how long the study takes, not its numbers; a folder may be continued with another.
    ``precision`` (``fp32``, ``bf16``, ``fp16``) runs every forward pass under
    ``torch.autocast`` to that dtype (``fp32``: none); it changes the numbers, so a folder
    computed in one precision is refused in another.

    ``executor`` (``local``, ``ray`` with the cluster's ``address``, or an
    :class:`~layerlmc.analyses.executors.Executor`) runs the cells: the endpoints, then each
    path on its own; the records are the same, and only this process writes to ``out``.
    """
    state_a = load_state_dict(a) if isinstance(a, (str, FilePath)) else dict(a)
    state_b = load_state_dict(b) if isinstance(b, (str, FilePath)) else dict(b)
    expected = model.state_dict()
    check_pair(state_a, state_b, expected)
    # groups follow the model's order, whatever order the files stored (safetensors sorts keys)
    state_a, state_b = reorder_like(state_a, expected), reorder_like(state_b, expected)
    digest_b = state_digest(state_b)  # the input is the checkpoint given, whatever its alignment
    state_b, matching = align_pair(model, state_a, state_b, data, alignment)
    paths = paths.with_alphas(FULL_ALPHAS)
    planned = plan_paths(state_a, model, paths=paths)
    chosen = build_evaluator(model, data, state_a, evaluation=evaluation)
    # the cluster is reached (or refused) before the output folder is claimed
    with using_executor(executor, address, device=chosen.device) as runner:
        run = None
        if out is not None:
            run = RunDir(out)
            inputs = {"checkpoint a": state_digest(state_a), "checkpoint b": digest_b,
                      **analysis_inputs(model, data, evaluation, paths.groups, paths.patterns,
                                        chosen.bn_summary, chosen.precision),
                      "alignment": alignment_input(alignment)}
            settings = dict(config) if config is not None else {
                "groups": paths.groups, "patterns": list(paths.patterns),
                "layers": list(paths.layers or []), "layerwise": paths.layerwise,
                "bases": list(paths.bases), "cumulative": list(paths.cumulative),
                "alphas": str(paths.alphas),
                "layer_alphas": None if paths.layer_alphas is None else str(paths.layer_alphas),
                "definitions": list(paths.definitions), "references": list(paths.references),
                "splits": list(evaluation.splits or []), "max_examples": evaluation.max_examples,
                "batch_size": evaluation.batch_size, "device": evaluation.device,
                "seed": evaluation.seed, "extrapolate": paths.extrapolate, "bn": evaluation.bn,
                "bn_batches": evaluation.bn_batches, "bn_batch_size": evaluation.bn_batch_size,
                "bn_split": evaluation.bn_split, "evaluator": evaluation.evaluator,
                "precision": evaluation.precision, "loss_mean": evaluation.loss_mean,
                "align": alignment.align, "align_seed": alignment.align_seed,
            }
            run.claim(inputs, settings, str(chosen.device))
            if matching is not None:
                save_matching(run.path, matching)
                write_alignment(run.path, [matching_summary(matching)])
        with run.status_on_error() if run is not None else contextlib.nullcontext():
            records = evaluate_steps(runner, chosen, [(None, state_a, state_b)], planned, run=run,
                                     unit=None, progress=progress)
        table = compute_barriers(pd.DataFrame(records), paths.definitions, paths.references)
        if run is not None:
            run.write_barriers(table)
            run.finish("complete")
        return table


def alignment_rows(before: pd.DataFrame, after: pd.DataFrame, activation: pd.DataFrame | None = None,
                   metric: str = "loss", split: str = "test",
                   definition: str = "midpoint") -> pd.DataFrame:
    """One row per path (full, each group and base, each cumulative prefix): the barrier of
    the unaligned pair (``before``), of the weight-matched pair (``after``), what weight
    matching removed, and, given its table, the barrier after activation matching."""
    def pick(table):
        chosen = table[(table.metric == metric) & (table.split == split)
                       & (table.definition == definition) & (table.reference != "path")]
        keys = chosen[["kind", "group", "group_index", "base", "order"]].apply(
            lambda r: "|".join(map(str, r)), axis=1)
        return chosen.assign(key=keys.to_numpy()).set_index("key")
    x, y = pick(before), pick(after)
    rows = x[["kind", "group", "group_index", "base", "order"]].copy()
    rows["before"] = x["value"]
    rows["after"] = y["value"].reindex(x.index)
    rows["removed"] = rows["before"] - rows["after"]
    if activation is not None:
        rows["activation"] = pick(activation)["value"].reindex(x.index)
    return rows.reset_index(drop=True)
