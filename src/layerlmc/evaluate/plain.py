"""The plain evaluator: one pass over preloaded tensors per network state."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..core.groups import tied_keys
from ..core.paths import materialize
from ..errors import LayerLMCError, did_you_mean
from .batchnorm import (
    batchnorm_mode,
    batchnorm_modules,
    check_policy,
    describe,
    fresh_statistics,
    statistics_keys,
)
from .data import Split

log = logging.getLogger("layerlmc")

#: ``--precision``: the autocast dtype of every forward pass an evaluator runs (``fp32``: no
#: autocast, the model's own dtypes). Lower precision changes the numbers, so it is an input of
#: stored results (:func:`layerlmc.evaluate.options.analysis_inputs`), never a mere setting.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


#: How a split's loss is averaged: ``example``, the mean cross-entropy per example (per label
#: element); ``batch``, the mean of the per-batch means of ``batch_size`` examples, as the
#: paper's code computes it (``total_loss / n_batches`` at batch 256). They differ only when the
#: last batch is short. Accuracy is per example either way.
LOSS_MEANS = ("example", "batch")


def check_loss_mean(loss_mean: str) -> str:
    if loss_mean not in LOSS_MEANS:
        raise LayerLMCError(f"unknown loss mean '{loss_mean}'{did_you_mean(str(loss_mean), LOSS_MEANS)}; "
                            f"choose one of {', '.join(LOSS_MEANS)}")
    return loss_mean


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        close = did_you_mean(str(precision), PRECISIONS)
        raise LayerLMCError(f"unknown precision '{precision}'{close}; "
                            f"choose one of {', '.join(PRECISIONS)}")
    return precision


def precision_context(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of the context every forward pass at ``precision`` on ``device`` runs in:
    ``torch.autocast`` to the precision's dtype, or nothing for ``fp32``. A device type or
    dtype autocast does not support (bf16 on a GPU without it, an accelerator without
    autocast) is one clear error here, not a silent fall back to fp32."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return nullcontext
    # torch warns and disables itself where it cannot autocast: that is an error here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            enabled = getattr(torch.autocast(device.type, dtype=dtype), "_enabled", True)
            why = str(caught[0].message) if caught else ""
        except (RuntimeError, ValueError) as err:
            enabled, why = False, str(err)
    if not enabled:
        why = (why.strip().splitlines() or [""])[0]
        raise LayerLMCError(f"--precision {precision} is not available on device {device}"
                            + (f" ({why})" if why else "") + "; use --precision fp32")
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def in_precision(method: Callable) -> Callable:
    """Run an evaluator method under the evaluator's precision (:attr:`Evaluator.precision`).
    Every public entry point that runs the model (``prepare``, ``evaluate``,
    ``evaluate_many``, ``check``, and the overrides of subclasses) carries it, so no forward
    pass escapes it; nested entry points simply re-enter the same autocast."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._autocast():
            return method(self, *args, **kwargs)

    return wrapper


def score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """Summed cross-entropy, correct predictions and label count of one batch; every evaluator
    adds these up the same way, so that their metrics agree."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    # summed, not averaged per batch: a last, smaller batch must not weigh more
    loss = F.cross_entropy(logits, labels, reduction="sum").item()
    correct = int((logits.argmax(dim=-1) == labels).sum().item())
    return loss, correct, labels.numel()


class _Recomputed(dict):
    """A state whose BatchNorm statistics were recomputed: :meth:`Evaluator.prepare` is done."""


@dataclass(frozen=True)
class Job:
    """One state to evaluate, with what a batched evaluator may exploit about it.

    ``state`` maps every parameter and buffer name to a tensor. ``base``, when given, is a
    state this one equals except at the keys in ``changed``: the tensors of every other key
    are the base's own or equal to them (``paths.interpolate`` builds points that way). An
    evaluator that does not use them evaluates ``state`` alone.

    The interpolated tensors of ``state`` live in the sweep's scratch memory
    (:class:`layerlmc.core.paths.Scratch`): they are valid during the ``evaluate_many`` call
    that receives the job and are overwritten by later points, so an evaluator keeps nothing
    that refers to them (activations it computed from them are its own) beyond that call.
    For an evaluator that :attr:`~Evaluator.reads_lazily`, ``state`` is a
    :class:`~layerlmc.core.paths.LazyState` instead, whose interpolated tensors are new each
    time they are read.
    """

    state: Mapping[str, torch.Tensor]
    base: Mapping[str, torch.Tensor] | None = None
    changed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Metrics:
    """``loss``: mean cross-entropy per example (per label element); ``accuracy``: a fraction."""

    loss: float
    accuracy: float
    n: int

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


class Evaluator:
    """Evaluates states of one model on preloaded splits with ``functional_call``.

    The model is built once and put in eval mode; each state is a mapping of every
    parameter and buffer name to a tensor on the evaluation device. Logits have the class
    dimension last; labels have the logits' shape without it (one label per example, or per
    token for sequence models).

    ``bn`` is the BatchNorm policy (:mod:`layerlmc.evaluate.batchnorm`). The evaluator applies
    ``recompute`` (statistics estimated from ``bn_batches``, a sequence of input batches on the
    device) and ``batch-stats``; ``interpolate`` and ``keep-base`` decide which statistics a
    state holds, so they are the caller's (:func:`layerlmc.evaluate.points.evaluate_paths`). The model's
    modes and attributes are restored after every call. ``bn_source`` says where
    ``bn_batches`` come from, for :attr:`bn_summary`.

    ``precision`` (:data:`PRECISIONS`: ``fp32``, ``bf16``, ``fp16``) runs every forward pass,
    BatchNorm recomputation included, under ``torch.autocast`` to that dtype on the
    evaluator's device; ``fp32`` runs none. Scores are summed in float32 either way.
    """

    #: which evaluator this is (``--evaluator``); the batched ones answer :meth:`evaluate_many`
    #: with the same numbers by other means
    kind = "plain"
    #: whether :meth:`evaluate_many` reads a job's interpolated tensors one module at a time,
    #: so that a sweep hands it :class:`~layerlmc.core.paths.LazyState` mappings instead of
    #: building every state into scratch memory (:func:`layerlmc.evaluate.points.evaluate_paths`)
    reads_lazily = False

    def __init__(
        self,
        model: torch.nn.Module,
        splits: Mapping[str, Split],
        batch_size: int = 1024,
        *,
        bn: str = "interpolate",
        bn_batches: Sequence[torch.Tensor] = (),
        bn_source: str = "",
        precision: str = "fp32",
        loss_mean: str = "example",
    ):
        if batch_size < 1:
            raise LayerLMCError(f"batch size must be positive, got {batch_size}")
        self.model = model.eval()
        self.splits = dict(splits)
        # functional_call refuses two values for one tied tensor: pass the first name only
        self._tied_aliases = {key for tie in tied_keys(model) for key in tie[1:]}
        first = next(iter(self.splits.values()), None)
        self.device = first.labels.device if first is not None else torch.device("cpu")
        self.batch_size = batch_size
        self.precision = check_precision(precision)
        self.loss_mean = check_loss_mean(loss_mean)
        self._autocast = precision_context(precision, self.device)
        self._checked: set[str] = set()
        self.bn = check_policy(bn)
        self.bn_modules = batchnorm_modules(model)
        #: the state-dict keys of the running statistics the policy acts on
        self.bn_keys = statistics_keys(self.bn_modules)
        self.bn_batches = list(bn_batches) if self.bn == "recompute" and self.bn_modules else []
        if self.bn != "interpolate" and not self.bn_modules:
            log.info("--bn %s: the model has no BatchNorm layer with running statistics; "
                     "the policy changes nothing", self.bn)
        if self.bn == "recompute" and self.bn_modules and not self.bn_batches:
            raise LayerLMCError("--bn recompute needs batches of inputs to estimate the "
                                "BatchNorm statistics from")
        self.bn_summary = describe(self.bn, bool(self.bn_modules), batches=self.bn_batches,
                                   source=bn_source, eval_batch_size=batch_size)

    @in_precision
    @torch.inference_mode()
    def prepare(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``state`` as it is evaluated: under ``recompute``, with new running statistics
        estimated from :attr:`bn_batches` (every other entry is the state's own tensor);
        otherwise ``state`` itself. Prepare a state once to evaluate it on several splits;
        :meth:`evaluate` prepares a state that is not."""
        if not self.bn_batches or isinstance(state, _Recomputed):
            return materialize(state)
        fresh = _Recomputed(fresh_statistics(state, self.bn_modules))
        # a cumulative average (momentum None): every batch weighs the same, whatever the order
        with batchnorm_mode(self.bn_modules, momentum=None):
            for inputs in self.bn_batches:
                self._forward(fresh, inputs, "", doing="recomputing BatchNorm statistics")
        return fresh

    @in_precision
    @torch.inference_mode()
    def evaluate(self, state: Mapping[str, torch.Tensor], split: str) -> Metrics:
        data = self.splits[split]
        state = self.prepare(state)  # a lazy state is computed once here, not once per batch
        totals = self._totals(1)
        # batch statistics normalise, and nothing is tracked: the stored buffers stay as they are
        batch_stats = self.bn == "batch-stats" and self.bn_modules
        mode = batchnorm_mode(self.bn_modules, track=False) if batch_stats else nullcontext()
        with mode:
            for start in range(0, len(data), self.batch_size):
                inputs = data.inputs[start : start + self.batch_size]
                labels = data.labels[start : start + self.batch_size]
                logits = self._forward(state, inputs, split)
                self._add_scores(totals, [logits], data, labels)
        return self._metrics(totals[0])

    @in_precision
    def evaluate_many(self, jobs: Sequence[Job], split: str) -> list[Metrics]:
        """The metrics of every job's state on ``split``, in order: one :meth:`evaluate` each
        (the batched evaluators override this)."""
        return [self.evaluate(job.state, split) for job in jobs]

    @in_precision
    @torch.inference_mode()
    def check(self, state: Mapping[str, torch.Tensor]) -> None:
        """Fail early, with a clear message, when labels do not fit the model's outputs."""
        state = materialize(state)
        for name, data in self.splits.items():
            logits = self._forward(state, data.inputs[:2], name)
            self._check_labels(name, logits, data.labels)

    def _forward(
        self, state: Mapping[str, torch.Tensor], inputs: torch.Tensor, split: str, doing: str = "",
    ) -> torch.Tensor:
        if self._tied_aliases:
            state = {k: v for k, v in state.items() if k not in self._tied_aliases}
        try:
            logits = functional_call(self.model, state, (inputs,))
        except Exception as err:  # noqa: BLE001 - the user's model failing on the user's data
            text = str(err).strip().splitlines()
            where = doing or f"on split '{split}'"
            if self.bn in ("recompute", "batch-stats") and self.bn_modules:
                where += f" (--bn {self.bn}: BatchNorm layers in train mode)"
            if self.precision != "fp32":
                where += f" (--precision {self.precision})"
            raise LayerLMCError(
                f"the model failed {where} (inputs of shape {list(inputs.shape)}): "
                f"{type(err).__name__}: {text[0] if text else ''}"
            ) from None
        if not isinstance(logits, torch.Tensor):
            raise LayerLMCError(f"the model returned a {type(logits).__name__}, not a tensor of logits")
        return logits

    @staticmethod
    def _totals(jobs: int) -> list[list]:
        """Running totals of each job: summed loss, correct, count, summed batch means, batches."""
        return [[0.0, 0, 0, 0.0, 0] for _ in range(jobs)]

    def _add_scores(self, totals: list[list], outputs, data: Split, labels: torch.Tensor) -> None:
        """Add one batch's :func:`score` of each job's logits to that job's running totals."""
        for total, logits in zip(totals, outputs):
            if data.name not in self._checked:
                self._check_labels(data.name, logits, data.labels)
            loss, correct, count = score(logits, labels)
            total[0] += loss
            total[1] += correct
            total[2] += count
            total[3] += loss / count
            total[4] += 1

    def _metrics(self, total: list) -> Metrics:
        """A job's metrics from its totals, its loss averaged as :attr:`loss_mean` says."""
        loss = total[0] / total[2] if self.loss_mean == "example" else total[3] / total[4]
        return Metrics(loss, total[1] / total[2], total[2])

    def _check_labels(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.ndim < 2:
            raise LayerLMCError(f"the model's output has shape {list(logits.shape)}; expected logits [batch, ..., classes]")
        if tuple(logits.shape[1:-1]) != tuple(labels.shape[1:]):
            raise LayerLMCError(
                f"split '{split}': labels of shape {list(labels.shape[1:])} per example do not fit "
                f"logits of shape {list(logits.shape[1:])}"
            )
        classes = logits.shape[-1]
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise LayerLMCError(
                f"split '{split}': labels range over [{low}, {high}] but the model outputs {classes} classes"
            )
        self._checked.add(split)
