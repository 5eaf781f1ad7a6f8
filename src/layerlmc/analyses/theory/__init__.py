"""Theory of layer cuts (PAPER.md §3): deep linear networks and the paper's toy example.

- :func:`deep_linear_cuts` / :func:`deep_linear_study`: train two deep linear networks and
  trace the loss along every single-layer cut, pair cut and the full path; check convexity.
- :func:`toy_study`: the scalar toy network of the paper's Figure 4 (``layerlmc reproduce fig4``).
"""

from .deep_linear import (
    DeepLinearPair,
    convexity,
    count_convex,
    curve_convexity,
    cut_losses,
    cut_weights,
    deep_linear_cuts,
    deep_linear_pair,
    deep_linear_study,
    exact_curvature,
    layer_cuts,
    loss_of_output,
    min_curvature,
    mse_polynomial,
    network_output,
    non_convex,
)
from .toy import toy_paths, toy_study, toy_summary

__all__ = [
    "DeepLinearPair",
    "convexity",
    "count_convex",
    "curve_convexity",
    "cut_losses",
    "cut_weights",
    "deep_linear_cuts",
    "deep_linear_pair",
    "deep_linear_study",
    "exact_curvature",
    "layer_cuts",
    "loss_of_output",
    "min_curvature",
    "mse_polynomial",
    "network_output",
    "non_convex",
    "toy_paths",
    "toy_study",
    "toy_summary",
]
