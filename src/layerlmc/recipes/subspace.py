"""``layerlmc reproduce subspace``: the notebooks' subspace experiment (PAPER.md §4.2) on two
small MLPs trained on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analyses.subspace import SPANS, trajectory_snapshots
from ..api import subspace
from ..errors import unknown
from .pair import CONFIGS, train_pair

CONFIG = CONFIGS / "subspace_synthetic.yaml"


def reproduce_subspace(
    out: str | Path = "runs/reproduce",
    device: str = "auto",
    progress: bool | None = None,
    *,
    span: str = "final",
    epochs: int | None = None,
    sigmas: str = "0.001:10:100",
    layer_sigmas: str = "0.001:5:100",
    samples: int = 1,
    seed: int = 0,
) -> tuple[pd.DataFrame, Path]:
    """The notebooks' subspace experiment: train ``configs/subspace_synthetic.yaml`` (two
    16→16→16→16→3 ReLU MLPs from one initialization, each on its own half of the training data;
    once, into ``out/subspace_synthetic``), then perturb both in ``span`` (default ``final``:
    span{θ_a, θ_b}, the published plots; ``trajectory``: every epoch's weights), its null space
    and the averaging direction, for the full network (σ in ``sigmas``) and each layer (σ in
    ``layer_sigmas``), on the test split. Returns the table and the analysis folder
    ``out/subspace_<span>``."""
    if span not in SPANS:
        raise unknown("span", span, SPANS)
    out = Path(out)
    pair = train_pair(CONFIG, out, epochs=epochs, device=device, progress=progress)
    model, data, config, trained = pair.model, pair.data, pair.config, pair.run
    a_ckpts, b_ckpts = pair.a, pair.b
    last = max(set(a_ckpts) & set(b_ckpts))
    snapshots = trajectory_snapshots(a_ckpts, b_ckpts) if span == "trajectory" else None
    analysis = out / f"subspace_{span}"
    table = subspace(
        model, a_ckpts[last], b_ckpts[last], data, analysis, span=span, snapshots=snapshots,
        sigmas=sigmas, layer_sigmas=layer_sigmas, samples=samples, per_layer=True,
        splits=[config.data.test_split], device=device, seed=seed, step=last, unit="epoch",
        progress=progress,
        config={"recipe": "subspace", "training": str(trained), "span": span, "sigmas": sigmas,
                "layer_sigmas": layer_sigmas, "samples": samples, "seed": seed, "per_layer": True,
                "coefficients": "uniform", "renormalise": False, "step": last},
    )
    return table, analysis
