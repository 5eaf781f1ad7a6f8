"""``layerlmc reproduce lm``: the paper's language-model study (PAPER.md §2.4) at a scale that
fits two CPU cores.

The paper trains nanoGPT-style models (12 layers, width 768) with llm-baselines on
Shakespeare-char and Wikitext-103 and averages each "logic layer" of two runs at α=½. Here a
pair of 4-block GPT-style character models (``char-gpt``, width 96) is trained on the Jargon
File (Debian ``jargon-text``) from one initialization with different data order
(``configs/pair_jargon_gpt.yaml``: AdamW, a short warmup into a cosine), and every epoch goes
through :func:`layerlmc.analyses.trajectory`: the full path, every layer with base ``a`` and
``b``, and cumulative averaging from the input (``shallow``) and from the output (``deep``)
side, on a fixed, seeded set of test windows (next-token loss and accuracy per token).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import trajectory
from .pair import CONFIGS, train_pair

CONFIG = CONFIGS / "pair_jargon_gpt.yaml"
CUMULATIVE = ("shallow", "deep")


def reproduce_lm(
    out: str | Path = "runs/reproduce", epochs: int | None = None, every: int = 1,
    max_examples: int = 128, device: str = "auto", progress: bool | None = None,
    plots: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Train the GPT pair (once; a rerun resumes) and analyse every ``every``-th epoch on
    ``max_examples`` test windows: full, layer-wise (bases a and b) and cumulative
    shallow/deep barriers at α=½ against the two full models (the paper's definition).

    The run's character vocabulary is written to ``<run>/vocab.json`` (it is also a pure
    function of the text: its sorted set of characters). Returns the barrier table, the
    distance table and the analysis folder ``out/lm`` (heatmaps in ``out/lm/figures`` unless
    ``plots=False``).
    """
    # the text dataset has training write its vocabulary to <run>/vocab.json
    pair = train_pair(CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / "lm"
    barriers, distances = trajectory(
        pair.model, pair.a, pair.b, pair.data, analysis, every=every, splits=["test"],
        max_examples=max_examples, device=device, progress=progress, layerwise=True,
        cumulative=CUMULATIVE, plots=plots,
        config={"recipe": "lm", "training": str(pair.run), "every": every,
                "max_examples": max_examples, "splits": ["test"], "layerwise": True,
                "cumulative": list(CUMULATIVE)},
    )
    return barriers, distances, analysis


def summarize_lm(barriers: pd.DataFrame, split: str = "test", metric: str = "loss") -> pd.DataFrame:
    """Per step: the full-network barrier, the largest single-layer barrier (and its layer and
    base), and per cumulative order the layer whose addition first lifts the prefix's barrier
    (either base) to half the full one (``None`` when none does)."""
    table = barriers[(barriers["split"] == split) & (barriers["metric"] == metric)
                     & (barriers["definition"] == "midpoint") & (barriers["reference"] == "models")]
    rows = []
    for step, at_step in table.groupby("step"):
        full = at_step[at_step["kind"] == "full"]["value"]
        full_value = float(full.iloc[0]) if len(full) else float("nan")
        layers = at_step[at_step["kind"] == "group"]
        worst = layers.loc[layers["value"].idxmax()] if len(layers) else None
        row = {
            "step": int(step), "full": full_value,
            "max_layer": float(worst["value"]) if worst is not None else float("nan"),
            "max_layer_group": worst["group"] if worst is not None else None,
            "max_layer_base": worst["base"] if worst is not None else None,
        }
        cumulative = at_step[at_step["kind"] == "cumulative"]
        for order in CUMULATIVE:
            row[f"{order}_half"] = _first_reaching(cumulative[cumulative["order"] == order],
                                                   full_value / 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _first_reaching(prefixes: pd.DataFrame, threshold: float) -> str | None:
    if prefixes.empty or not threshold > 0:
        return None
    reached = prefixes[prefixes["value"] >= threshold].sort_values("group_index")
    if reached.empty:
        return None
    first = reached.iloc[0]
    return f"{first['group']} (prefix {int(first['group_index']) + 1})"
