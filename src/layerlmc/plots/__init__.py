"""Figures, drawn from records only: every function here takes the tables an analysis wrote
(``points.jsonl``, ``barriers.csv``, ``robustness.csv``, ...) and a folder, and loads no model.
PNG and PDF files are written atomically (:func:`~layerlmc.plots.common.save_figure`).

- :mod:`.barriers`: one pair's full path, layer-wise and cumulative barriers;
- :mod:`.trajectory`: heatmaps over training, layer distances, multi-model barriers;
- :mod:`.robustness`, :mod:`.subspace`, :mod:`.theory`: those studies' figures.
"""

from .barriers import (
    METRIC_LABEL,
    plot_cumulative,
    plot_full_path,
    plot_layer_barriers,
    plot_run,
)
from .common import save_figure
from .robustness import plot_curves, plot_heatmaps, plot_robustness
from .subspace import plot_subspace
from .theory import plot_cuts, plot_toy
from .trajectory import plot_distances, plot_multimodel, plot_trajectory

__all__ = ["METRIC_LABEL", "plot_cumulative", "plot_curves", "plot_cuts", "plot_distances",
           "plot_full_path", "plot_heatmaps", "plot_layer_barriers", "plot_multimodel",
           "plot_robustness", "plot_run", "plot_subspace", "plot_toy", "plot_trajectory",
           "save_figure"]
