"""The scalar toy network of the paper's Figure 4 (PAPER.md §3.2, our reconstruction).

``f(x) = w2·w1·x`` learns ``y = x`` (unit-variance x), so the loss is ``(w1·w2 − 1)²`` and the
minima form the hyperbola ``w1·w2 = 1``. Between the minima ``A = (0.5, 2)`` and ``B = (2, 0.5)``:

- ``full`` (both weights blended): loss (2.25·α·(1−α))², a barrier of 81/256 = 0.31640625 at α=½;
- ``w2`` (only w2 blended, w1 = 0.5 from A): loss (0.75·α)², 0.140625 at α=½, 0.5625 at α=1;
- ``w1`` (only w1 blended, w2 = 2 from A): loss (3·α)², 2.25 at α=½, 9 at α=1.

The single-weight paths are convex parabolas (the theorem); the full path is a quartic that is
not convex. All numbers are exact in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .deep_linear import DeepLinearPair, curve_convexity, cut_losses, min_curvature, mse_polynomial

A = (0.5, 2.0)
B = (2.0, 0.5)
#: path name → the 1-based layers it blends; the others come from A (base a).
PATHS = {"full": (1, 2), "w1": (1,), "w2": (2,)}
ALPHAS = np.linspace(0.0, 1.0, 101)
PATH_COLUMNS = ("path", "alpha", "w1", "w2", "loss")
SUMMARY_COLUMNS = ("path", "layers", "loss_at_half", "loss_at_1", "barrier", "convex",
                   "min_curvature")


def toy_loss(w1: np.ndarray | float, w2: np.ndarray | float) -> np.ndarray | float:
    """(w1·w2 − 1)²: the squared error of f(x) = w2·w1·x against y = x for unit-variance x."""
    return (np.asarray(w1, dtype=np.float64) * w2 - 1.0) ** 2


def toy_pair() -> DeepLinearPair:
    """The toy as a depth-2 deep linear network of width 1 (one example x = y = 1), so that
    the general cut machinery computes its paths."""
    one = torch.ones(1, 1, dtype=torch.float64)
    return DeepLinearPair(
        inputs=one, targets=one, loss="mse",
        weights_a=[torch.tensor([[A[0]]]), torch.tensor([[A[1]]])],
        weights_b=[torch.tensor([[B[0]]]), torch.tensor([[B[1]]])],
    )


def toy_paths(alphas: np.ndarray = ALPHAS) -> pd.DataFrame:
    """Tidy ``path, alpha, w1, w2, loss`` for the three straight paths out of A."""
    alphas = np.asarray(alphas, dtype=np.float64)
    pair = toy_pair()
    frames = []
    for name, layers in PATHS.items():
        w1 = (1 - alphas) * A[0] + alphas * B[0] if 1 in layers else np.full_like(alphas, A[0])
        w2 = (1 - alphas) * A[1] + alphas * B[1] if 2 in layers else np.full_like(alphas, A[1])
        loss = cut_losses(pair, layers, "a", alphas)
        frames.append(pd.DataFrame({"path": name, "alpha": alphas, "w1": w1, "w2": w2,
                                    "loss": loss}))
    return pd.concat(frames, ignore_index=True)[list(PATH_COLUMNS)]


def toy_summary(paths: pd.DataFrame) -> pd.DataFrame:
    """Per path: the loss at α=½ and α=1, the barrier over its own chord, convexity on the
    grid, and the exact minimum of L''(α) over [0, 1] (negative: not convex)."""
    pair = toy_pair()
    rows = []
    for name, layers in PATHS.items():
        curve = paths[paths["path"] == name]
        convex, _, barrier = curve_convexity(curve["alpha"], curve["loss"])
        half, end = cut_losses(pair, layers, "a", [0.5, 1.0])
        rows.append({
            "path": name, "layers": "+".join(f"w{k}" for k in layers),
            "loss_at_half": float(half), "loss_at_1": float(end),
            "barrier": barrier, "convex": convex,
            "min_curvature": min_curvature(mse_polynomial(pair, layers, "a")),
        })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def toy_study(out: str | Path = "runs/theory/toy", progress: bool | None = None) -> pd.DataFrame:
    """Write the toy study to the run folder ``out`` and return its summary table.

    Files: ``paths.csv`` (:func:`toy_paths`, 101 alphas), ``summary.csv`` (:func:`toy_summary`),
    ``config.yaml``, ``run.json``; the figure is the recipe's (:func:`layerlmc.recipes.fig4`).
    ``progress`` is accepted for the recipe interface; the study takes well under a second.
    """
    from ...core.records import RunDir

    run = RunDir(out)
    settings = {"study": "toy", "a": list(A), "b": list(B), "alphas": len(ALPHAS)}
    run.claim(settings, settings, "cpu")
    with run.status_on_error():
        paths = toy_paths()
        summary = toy_summary(paths)
        run.write_file("paths.csv", paths.to_csv(index=False))
        run.write_file("summary.csv", summary.to_csv(index=False))
        run.finish("complete")
    return summary
