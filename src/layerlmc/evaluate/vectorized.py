"""The vectorised evaluator: many states of a small model in one batched forward pass.

The tensors in which a chunk of states differ are stacked (``torch.func.stack_module_state``
style, along a new first dimension), every other tensor is shared, and
``torch.func.vmap(functional_call)`` runs the chunk on each input batch at once. For small
fully connected models this replaces many small matrix products, each with its Python and
dispatch overhead, by a few batched ones; for convolutions on a CPU it is slower (a batched
convolution is a loop or a grouped convolution), which is why ``--evaluator auto`` measures
before it picks it. ``chunk`` bounds the memory: at most ``chunk`` copies of the differing
tensors and ``chunk`` batches of activations at once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch.func import functional_call, vmap

from .data import Split
from .plain import Evaluator, Job, Metrics, in_precision

log = logging.getLogger("layerlmc")


class VectorizedEvaluator(Evaluator):
    """An :class:`Evaluator` whose :meth:`evaluate_many` runs ``chunk`` states at a time with
    ``vmap``. Models ``vmap`` cannot run (data-dependent control flow, ``.item()``), and the
    BatchNorm policies ``recompute`` and ``batch-stats``, take the plain path with a one-line
    notice. Metrics equal the plain evaluator's to float rounding (batched products may sum
    in another order)."""

    kind = "vmap"

    def __init__(self, model: torch.nn.Module, splits: Mapping[str, Split], batch_size: int = 1024,
                 *, chunk: int = 16, **kwargs) -> None:
        super().__init__(model, splits, batch_size, **kwargs)
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.chunk = chunk
        self.vectorized = True
        if self.bn in ("recompute", "batch-stats") and self.bn_modules:
            self._fall_back(f"--bn {self.bn} changes the statistics of every state")

    def _fall_back(self, why: str) -> None:
        log.warning("vmap evaluator: %s; using the plain evaluator", why)
        self.vectorized = False

    @in_precision
    def evaluate_many(self, jobs: Sequence[Job], split: str) -> list[Metrics]:
        results: list[Metrics] = []
        for start in range(0, len(jobs), self.chunk):
            chunk = jobs[start : start + self.chunk]
            if self.vectorized and len(chunk) > 1:
                try:
                    results += self._evaluate_on(chunk, self.splits[split])
                    continue
                except Exception as err:  # noqa: BLE001 - the plain path still works
                    line = (str(err).strip().splitlines() or [""])[0]
                    self._fall_back(f"the model cannot be vmapped ({type(err).__name__}: {line})")
            results += super().evaluate_many(chunk, split)
        return results

    @torch.inference_mode()
    def _evaluate_on(self, jobs: Sequence[Job], data: Split) -> list[Metrics]:
        states = [{k: v for k, v in job.state.items() if k not in self._tied_aliases}
                  for job in jobs]
        first = states[0]
        # only what differs is stacked; a tensor every state shares is passed once
        varying = [k for k, v in first.items() if any(s[k] is not v for s in states[1:])]
        stacked = {k: torch.stack([s[k] for s in states]) for k in varying}
        shared = {k: v for k, v in first.items() if k not in stacked}

        def forward(params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, (params, shared), (inputs,))

        batched = vmap(forward, in_dims=(0, None))
        totals = self._totals(len(jobs))
        for start in range(0, len(data), self.batch_size):
            inputs = data.inputs[start : start + self.batch_size]
            labels = data.labels[start : start + self.batch_size]
            with warnings.catch_warnings():
                # vmap's note that an operation (attention) runs as a loop: auto measures that
                warnings.filterwarnings("ignore", message="There is a performance drop")
                logits = batched(stacked, inputs)
            self._add_scores(totals, logits.unbind(0), data, labels)
        return [self._metrics(total) for total in totals]
