"""Averaging named tensors: the server's step of federated averaging, as a pure function.

A state is a mapping from tensor names to tensors; the average of K states with weights w_k is
Σ w_k θ_k per name (Flower's aggregation over named arrays). Both the federated simulation
(:mod:`layerlmc.train.federated`) and the multi-model barriers (:mod:`layerlmc.analyses.multimodel`)
average this way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..errors import LayerLMCError
from .checkpoints import StateDict


def aggregate(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted average of ``states`` for every floating key in ``keys``.

    ``keys`` defaults to every key any state has. Each key is averaged over the clients that
    send it, with their weights normalised over those clients only; integer tensors (e.g.
    BatchNorm's ``num_batches_tracked``) are never blended and are left out of the result.
    Accumulates in float64 and returns each tensor in its own dtype; identical states give back
    exactly the same tensors. Pure: no input is modified.
    """
    if len(states) != len(weights):
        raise LayerLMCError(f"aggregate: {len(states)} states but {len(weights)} weights")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise LayerLMCError(f"aggregate: weights must be non-negative with a positive one, got {list(weights)}")
    wanted = list(dict.fromkeys(k for s in states for k in s)) if keys is None else list(keys)
    averaged: dict[str, torch.Tensor] = {}
    for key in wanted:
        senders = [(s[key], w) for s, w in zip(states, weights) if key in s and w > 0]
        if not senders or not senders[0][0].is_floating_point():
            continue
        total = math.fsum(w for _, w in senders)
        # base + Σ w·(t − base): identical tensors give back base exactly, whatever the dtype
        base = senders[0][0].double()
        mean = base + sum((t.double() - base) * (w / total) for t, w in senders)
        averaged[key] = mean.to(senders[0][0].dtype)
    return averaged


def full_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> StateDict:
    """Every key of the first state: floating keys averaged, integer buffers the first state's."""
    averaged = aggregate(states, weights)
    return {k: averaged.get(k, own) for k, own in states[0].items()}
