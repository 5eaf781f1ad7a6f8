"""Analyses: each turns checkpoints and data into records (``points.jsonl``) and tables, and
never draws (the figures are :mod:`layerlmc.plots`'; :mod:`layerlmc.api` runs both).

- :mod:`.pairwise`: full, layer-wise and cumulative barriers of one pair (``barriers``);
- :mod:`.trajectory`: the same at every step of two training runs;
- :mod:`.robustness`: the averaging direction against random directions of the same norm;
- :mod:`.subspace`: noise in the span, the null space and the averaging direction;
- :mod:`.multimodel`: barriers of the average of K models (federated clients);
- :mod:`.theory`: deep linear networks and the paper's toy example;
- :mod:`.cells` and :mod:`.executors`: how an analysis is split into cells and where they run.
"""

from .robustness import (
    random_direction,
    robustness,
    robustness_summary,
    robustness_table,
    step_fraction,
)
from .subspace import subspace
from .trajectory import find_checkpoints, layer_distances, trajectory

__all__ = [
    "find_checkpoints", "layer_distances", "random_direction", "robustness", "robustness_summary",
    "robustness_table", "step_fraction", "subspace", "trajectory",
]
