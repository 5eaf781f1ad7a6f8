"""Analyses over many checkpoints, built on the barrier core (``layerlmc.lmc``)."""

from .robustness import (
    random_direction,
    robustness,
    robustness_summary,
    robustness_table,
    step_fraction,
)
from .subspace import reproduce_subspace, subspace
from .trajectory import find_checkpoints, layer_distances, trajectory

__all__ = [
    "find_checkpoints", "layer_distances", "random_direction", "robustness", "robustness_summary",
    "robustness_table", "reproduce_subspace", "step_fraction", "subspace", "trajectory",
]
