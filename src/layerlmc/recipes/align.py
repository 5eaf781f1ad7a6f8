"""``layerlmc reproduce align``: what aligning hidden units removes, layer by layer (issue 13).

Two pairs of networks from *different* initializations on Fashion-MNIST, each trained once
(``configs/pair_fmnist_mlp_diffinit.yaml``: git re-basin's 3×512 MLP;
``configs/pair_fmnist_resnet20_diffinit.yaml``: a width-8 ResNet-20 with LayerNorm). For each,
the final checkpoints go through :func:`layerlmc.barriers` three times: unaligned, with weight
matching (``align="weight"``) and with activation matching (``align="activation"``, on 1,000
training images): full, layer-wise (both bases) and cumulative-from-the-input barriers on a
fixed subset of the test split. The recipe writes ``align.csv`` (one row per path: barrier
before, after weight matching, removed by it, after activation matching), ``align.md`` (the
same as markdown) and the figure ``figures/align.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..api import barriers
from ..analyses.pairwise import alignment_rows
from .pair import CONFIGS, train_pair

#: training examples whose unit outputs activation matching correlates
ACTIVATION_EXAMPLES = 1000

PAIRS = {
    "mlp": (CONFIGS / "pair_fmnist_mlp_diffinit.yaml", "module"),
    # blocks (layer1.0, ...) as groups, so the table has a row per residual block
    "resnet20-layernorm": (CONFIGS / "pair_fmnist_resnet20_diffinit.yaml", "block"),
}


def reproduce_align(out: str | Path = "runs/reproduce", epochs: int | None = None,
                    max_examples: int = 2000, device: str = "auto",
                    progress: bool | None = None) -> tuple[pd.DataFrame, Path]:
    """Train both pairs (once; a rerun resumes), measure their barriers unaligned and after
    weight and activation matching into ``out/align/<model>/{none,weight,activation}``, and
    write the table and figure into ``out/align``. Returns the table (columns ``model, kind,
    group, group_index, base, order, before, after, removed, activation``: midpoint loss
    barriers on the test split; ``after`` and ``removed`` are weight matching's) and the
    folder."""
    folder = Path(out) / "align"
    tables, rows_by_model = [], {}
    for name, (config, groups) in PAIRS.items():
        started = time.monotonic()
        pair = train_pair(config, out, epochs=epochs, device=device, progress=progress)
        last = max(set(pair.a) & set(pair.b))
        results = {}
        for method in ("none", "weight", "activation"):
            results[method] = barriers(
                pair.model, pair.a[last], pair.b[last], pair.data, out=folder / name / method,
                groups=groups, cumulative=("shallow",), splits=["test"], max_examples=max_examples,
                align=method, align_examples=ACTIVATION_EXAMPLES, device=device, progress=progress,
                config={"recipe": "align", "training": str(pair.run), "epoch": last,
                        "groups": groups, "align": method, "max_examples": max_examples},
            )
        rows = alignment_rows(results["none"], results["weight"], results["activation"])
        rows_by_model[name] = rows
        tables.append(rows.assign(model=name))
        print(f"{name}: trained and measured in {time.monotonic() - started:.0f} s")
    table = pd.concat(tables, ignore_index=True)
    table = table[["model", *[c for c in table.columns if c != "model"]]]
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "align.csv", index=False)
    (folder / "align.md").write_text(alignment_markdown(table))
    (folder / "figures").mkdir(exist_ok=True)
    from ..plots.align import plot_alignment  # matplotlib only when the figure is drawn

    plot_alignment(rows_by_model, folder / "figures" / "align.png")
    return table, folder


def alignment_markdown(table: pd.DataFrame) -> str:
    """Per model: the full barrier, then each group's (base a, base b) and each cumulative
    prefix's, unaligned, after weight matching (and what it removed) and after activation
    matching."""
    lines = []
    for name, rows in table.groupby("model", sort=False):
        lines += [f"**{name}** (midpoint loss barrier on the test subset, nats)", "",
                  "| path | group | unaligned | weight matching | removed by it | activation matching |",
                  "|---|---|---:|---:|---:|---:|"]
        for _, r in rows.iterrows():
            path = {"full": "full", "group": f"layer (others from {r['base']})",
                    "cumulative": f"cumulative from the input (others from {r['base']})"}.get(r["kind"], r["kind"])
            removed = f"{r['removed']:+.3f}"
            if r["kind"] == "full" and r["before"] > 0:
                removed += f" ({100 * r['removed'] / r['before']:.0f}%)"
            activation = f"{r['activation']:.3f}" if "activation" in r else ""
            lines.append(f"| {path} | {r['group']} | {r['before']:.3f} | {r['after']:.3f} | "
                         f"{removed} | {activation} |")
        lines.append("")
    return "\n".join(lines)
