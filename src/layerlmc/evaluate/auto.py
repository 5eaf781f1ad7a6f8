"""Choosing an evaluator (``--evaluator plain|incremental|vmap|auto``).

Every evaluator computes the same metrics (to float rounding); the choice changes only the
time a study takes, so it is a setting, never an input of the stored numbers. (The evaluation
``precision`` is another matter: it changes the numbers, so it is an input.)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import LayerLMCError, did_you_mean
from .data import Split
from .incremental import CACHE_MB, IncrementalEvaluator
from .plain import Evaluator, Job, Metrics, in_precision
from .vectorized import VectorizedEvaluator

log = logging.getLogger("layerlmc")

EVALUATORS = ("plain", "incremental", "vmap", "auto")
#: how much faster vmap must measure before ``auto`` takes it: timings on a busy machine jitter
VMAP_MARGIN = 0.8
#: jobs the ``auto`` probe times (on the first batch of the first call with several jobs)
PROBE_JOBS = 8


def check_evaluator(kind: str) -> str:
    if kind not in EVALUATORS:
        raise LayerLMCError(f"unknown evaluator '{kind}'{did_you_mean(str(kind), EVALUATORS)}; "
                            f"choose one of {', '.join(EVALUATORS)}")
    return kind


def make_evaluator(kind: str, model: torch.nn.Module, splits: Mapping[str, Split],
                   batch_size: int = 1024, *, chunk: int = 16, cache_mb: float = CACHE_MB,
                   **kwargs) -> Evaluator:
    """The evaluator named ``kind`` (:data:`EVALUATORS`); ``kwargs`` are the BatchNorm
    arguments, the ``precision`` and the ``loss_mean`` of :class:`Evaluator`, ``chunk`` the states ``vmap`` runs
    at once, ``cache_mb`` the first-layer memo's budget of ``incremental`` and ``auto``."""
    check_evaluator(kind)
    if kind == "plain":
        return Evaluator(model, splits, batch_size, **kwargs)
    if kind == "incremental":
        return IncrementalEvaluator(model, splits, batch_size, cache_mb=cache_mb, **kwargs)
    if kind == "vmap":
        return VectorizedEvaluator(model, splits, batch_size, chunk=chunk, **kwargs)
    return AutoEvaluator(model, splits, batch_size, chunk=chunk, cache_mb=cache_mb, **kwargs)


@dataclasses.dataclass
class EvaluatorSpec:
    """Everything an evaluator is made of (:func:`make_evaluator`'s arguments), so that a
    worker process of a distributed executor builds the same evaluator as the driver."""

    kind: str
    model: torch.nn.Module
    splits: Mapping[str, Split]
    batch_size: int
    bn: str = "interpolate"
    bn_batches: Sequence[torch.Tensor] = ()
    bn_source: str = ""
    precision: str = "fp32"
    loss_mean: str = "example"
    cache_mb: float = CACHE_MB

    def build(self) -> Evaluator:
        return make_evaluator(self.kind, self.model, self.splits, self.batch_size, bn=self.bn,
                              bn_batches=self.bn_batches, bn_source=self.bn_source,
                              precision=self.precision, loss_mean=self.loss_mean,
                              cache_mb=self.cache_mb)

    def to(self, device: torch.device | str) -> EvaluatorSpec:
        """A copy on ``device`` (the model and tensors; CPU to ship it to workers)."""
        return dataclasses.replace(
            self, model=copy.deepcopy(self.model).to(device),
            splits={name: Split(s.name, s.inputs.to(device), s.labels.to(device))
                    for name, s in self.splits.items()},
            bn_batches=[batch.to(device) for batch in self.bn_batches])


class AutoEvaluator(IncrementalEvaluator):
    """Incremental where the model traces (else plain), and ``vmap`` instead only where it
    measures faster: on the first call with several jobs, both run the first batch for up to
    :data:`PROBE_JOBS` of them (twice, the second run timed) and ``vmap`` is kept if it takes
    under :data:`VMAP_MARGIN` of the other's time. The choice then holds for the evaluator's
    life and is logged once."""

    kind = "auto"

    def __init__(self, model: torch.nn.Module, splits: Mapping[str, Split], batch_size: int = 1024,
                 *, chunk: int = 16, cache_mb: float = CACHE_MB, **kwargs) -> None:
        super().__init__(model, splits, batch_size, cache_mb=cache_mb, **kwargs)
        #: ``"vmap"``, ``"incremental"`` or ``"plain"`` once measured; None before
        self.chosen: str | None = None
        self.vmap: VectorizedEvaluator | None = None
        if self.bn in ("recompute", "batch-stats") and self.bn_modules:
            self.chosen = self._own_kind()  # no evaluator can reuse anything: the plain path
        else:
            self.vmap = VectorizedEvaluator(model, splits, batch_size, chunk=chunk, **kwargs)

    def _own_kind(self) -> str:
        return "incremental" if self.incremental else "plain"

    @in_precision
    def evaluate_many(self, jobs: Sequence[Job], split: str) -> list[Metrics]:
        if self.chosen is None and len(jobs) > 1:
            self.chosen = self._measure(jobs, split)
        if self.chosen == "vmap" and self.vmap is not None and self.vmap.vectorized:
            return self.vmap.evaluate_many(jobs, split)
        return super().evaluate_many(jobs, split)

    def _measure(self, jobs: Sequence[Job], split: str) -> str:
        data = self.splits[split]
        first = Split(data.name, data.inputs[: self.batch_size], data.labels[: self.batch_size])
        probe = [job for job in jobs if job.base is jobs[0].base][:PROBE_JOBS]
        if self.incremental and probe[0].base is not None:
            def own() -> object:
                return self._evaluate_on(probe, first)
        else:
            def own() -> object:
                return [self._forward(job.state, first.inputs, split) for job in probe]
        mine = _timed(own)
        try:
            theirs = _timed(lambda: self.vmap._evaluate_on(probe, first))
        except Exception as err:  # noqa: BLE001 - a model vmap cannot run is simply not chosen
            log.info("--evaluator auto: %s (vmap cannot run the model: %s)", self._own_kind(),
                     type(err).__name__)
            return self._own_kind()
        chosen = "vmap" if theirs < VMAP_MARGIN * mine else self._own_kind()
        log.info("--evaluator auto: %s (first batch, %d states: %s %.3f s, vmap %.3f s)", chosen,
                 len(probe), self._own_kind(), mine, theirs)
        return chosen


def _timed(work: Callable[[], object]) -> float:
    work()  # the first run pays for plans, allocations and vmap's set-up
    start = time.perf_counter()
    work()
    return time.perf_counter() - start
