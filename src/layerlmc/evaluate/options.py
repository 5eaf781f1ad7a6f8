"""How a study evaluates each network state (:class:`EvalOptions`, :func:`build_evaluator`), and
what its stored numbers therefore depend on (:func:`analysis_inputs`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.checkpoints import StateDict
from ..core.options import flat_options
from ..core.plan import as_list
from ..core.records import data_digest, short_hash
from .auto import EvaluatorSpec, check_evaluator
from .batchnorm import batchnorm_modules, check_policy
from .data import prepare_splits, resolve_device, statistics_batches
from .incremental import CACHE_MB
from .plain import Evaluator, check_loss_mean, check_precision


@dataclass(frozen=True)
class EvalOptions:
    """What each state is evaluated on, where and how; every analysis over checkpoints takes one
    (``evaluation=``), and its fields as keywords.

    ``splits`` (default: all the data has), ``max_examples`` (a fixed subset of each split,
    seeded by ``seed``), ``batch_size``, ``device`` (``auto``, ``cpu``, ``cuda[:N]``);
    ``bn``: the BatchNorm policy (:data:`~layerlmc.evaluate.BN_POLICIES`), with
    ``bn_batches`` batches of ``bn_batch_size`` (default ``batch_size``) examples of
    ``bn_split`` for ``recompute``; ``evaluator``: ``plain``, ``incremental``, ``vmap`` or
    ``auto`` (the same numbers, docs/evaluators.md); ``precision``: the autocast dtype of
    every forward pass (``fp32``: none; ``bf16`` and ``fp16`` change the numbers);
    ``loss_mean``: ``example`` (the mean cross-entropy per example) or ``batch`` (the mean of
    per-batch means of ``batch_size`` examples: the paper's code, at batch 256;
    :data:`~layerlmc.evaluate.plain.LOSS_MEANS`); ``cache_mb``: the memory (MiB) the
    ``incremental`` and ``auto`` evaluators may keep first-layer values in across the points
    of a study (0: none; a setting, not an input: the numbers are the same).
    """

    splits: Sequence[str] | None = None
    max_examples: int | None = None
    batch_size: int = 1024
    device: str = "auto"
    seed: int = 0
    bn: str = "interpolate"
    bn_batches: int = 10
    bn_batch_size: int | None = None
    bn_split: str = "train"
    evaluator: str = "plain"
    precision: str = "fp32"
    loss_mean: str = "example"
    cache_mb: float = CACHE_MB


@flat_options
def build_evaluator(model: torch.nn.Module, data: Mapping[str, object], state: StateDict, *,
                    evaluation: EvalOptions = EvalOptions()) -> Evaluator:
    """Splits loaded once onto the device, and the labels checked against the model's outputs at
    ``state`` before anything is written.

    Under the ``recompute`` BatchNorm policy the statistics of every state come from
    ``bn_batches`` batches of ``bn_split``, seeded by ``seed``
    (:func:`~layerlmc.evaluate.statistics_batches`).
    """
    check_policy(evaluation.bn)
    check_evaluator(evaluation.evaluator)
    check_precision(evaluation.precision)
    check_loss_mean(evaluation.loss_mean)
    target = resolve_device(evaluation.device)
    prepared = prepare_splits(data, as_list(evaluation.splits) or None, evaluation.max_examples,
                              evaluation.seed, target)
    batches: list[torch.Tensor] = []
    size = evaluation.bn_batch_size or evaluation.batch_size
    if evaluation.bn == "recompute" and batchnorm_modules(model):
        batches = statistics_batches(data, evaluation.bn_split, evaluation.bn_batches, size,
                                     evaluation.seed, target)
    source = f"split '{evaluation.bn_split}' (seed {evaluation.seed})"
    spec = EvaluatorSpec(evaluation.evaluator, model.to(target), prepared, evaluation.batch_size,
                         evaluation.bn, batches, source, evaluation.precision,
                         evaluation.loss_mean, evaluation.cache_mb)
    chosen = spec.build()
    chosen.spec = spec  # how a worker of a distributed executor builds the same evaluator
    chosen.check({k: v.to(target) for k, v in state.items()})
    return chosen


def analysis_inputs(
    model: torch.nn.Module, data: Mapping[str, object], evaluation: EvalOptions,
    groups: str, patterns: Sequence[str], batchnorm: str | None = None, precision: str = "fp32",
) -> dict[str, str]:
    """What every stored number depends on besides the checkpoints; other options only add or
    drop points, so a run folder may be reused when these are equal.

    ``batchnorm`` is the evaluator's :attr:`~layerlmc.evaluate.Evaluator.bn_summary`
    (default: the ``interpolate`` policy); ``precision`` its
    :attr:`~layerlmc.evaluate.Evaluator.precision` (a folder written before precision was
    recorded counts as ``fp32``: :data:`~layerlmc.core.records.INPUT_DEFAULTS`). The loss mean
    is one too, with the batch size when losses are means of batch means (a folder written
    before it was recorded holds per-example means).
    """
    if batchnorm is None:
        batchnorm = "interpolate" if batchnorm_modules(model) else "no BatchNorm"
    return {
        "model": short_hash(repr(model)),
        "data": data_digest(data),
        "example subset": (f"{evaluation.max_examples} examples, seed {evaluation.seed}"
                           if evaluation.max_examples else "all examples"),
        "grouping": f"{groups} {list(patterns)}" if patterns else groups,
        "BatchNorm policy": batchnorm,
        "precision": precision,
        "loss mean": ("example" if evaluation.loss_mean == "example"
                      else f"batch means of {evaluation.batch_size}"),
    }
