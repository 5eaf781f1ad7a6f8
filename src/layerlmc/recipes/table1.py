"""``layerlmc reproduce table1``: full against partial averaging in federated learning under two
non-iid splits (the paper's Table 1 at CPU scale, PAPER.md §5.3)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..api import federate
from ..config import FederatedConfig, load_config
from ..train.federated import round_summary
from .pair import CONFIGS

FEDERATED_CONFIG = CONFIGS / "fed_fmnist_dirichlet.yaml"
#: The splits of Table 1 (PAPER.md §5.3): label-skew non-iid and pathological non-iid.
TABLE1_PARTITIONS = {
    "dirichlet(0.1)": ["partition.scheme=dirichlet", "partition.alpha=0.1"],
    "shards(2 classes)": ["partition.scheme=shards", "partition.classes_per_client=2"],
}
#: Which layers are averaged, by the small CNN's groups (conv1, conv2, conv3, fc1, head); the
#: paper's hand-chosen lists translated to this network (PAPER.md §5.1).
TABLE1_STRATEGIES = {
    "all layers (FedAvg)": [],
    "all but the head (FedPer)": ["aggregate.exclude=head"],
    "all but the first layer": ["aggregate.exclude=conv1"],
    "convolutions only": ["aggregate.include=conv*"],
    "middle layers (conv2, conv3)": ["aggregate.include=conv2,conv3"],
    "one layer per round (round-robin)": ["aggregate.strategy=round-robin"],
    "none (local training only)": ["aggregate.strategy=none"],
}


def reproduce_table1(
    out: str | Path = "runs/reproduce", *, rounds: int | None = None, max_examples: int | None = None,
    device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Full vs partial aggregation under two non-iid splits (the paper's Table 1 at CPU scale).

    Every (split, strategy) cell is one federated run of ``configs/fed_fmnist_dirichlet.yaml``
    (10 clients, the small CNN, 12,000 Fashion-MNIST training images dealt out); a cell is the
    clients' accuracy on their own local test data after the last round, mean ± std over
    clients. Returns the tidy table (also ``table1.csv``; ``table1.md`` is the pivoted view)
    and the folder. Reruns resume and reuse finished runs.
    """
    # settings other than the defaults get their own folder: a run folder refuses another config
    folder = Path(out) / "".join(["table1", f"_rounds{rounds}" if rounds else "",
                                  f"_examples{max_examples}" if max_examples else ""])
    rows = []
    for split, split_overrides in TABLE1_PARTITIONS.items():
        for strategy, strategy_overrides in TABLE1_STRATEGIES.items():
            name = f"{_slug(split)}__{_slug(strategy)}"
            overrides = [f"name={name}", f"device={device}", "multimodel.enabled=false",
                         *split_overrides, *strategy_overrides]
            overrides += [f"rounds={rounds}"] if rounds else []
            overrides += [f"partition.max_examples={max_examples}"] if max_examples else []
            config = load_config(FederatedConfig, FEDERATED_CONFIG, overrides)
            run = federate(config, folder / name, progress=progress)
            last = round_summary(run).iloc[-1]
            rows.append({
                "split": split, "strategy": strategy, "round": int(last["round"]),
                "local_accuracy_mean": last["local_accuracy_mean"], "local_accuracy_std": last["local_accuracy_std"],
                "local_loss_mean": last["local_loss_mean"], "average_accuracy": last["average_accuracy"],
                "run": str(run),
            })
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "table1.csv", index=False)
    (folder / "table1.md").write_text(table1_markdown(table))
    return table, folder


def table1_markdown(table: pd.DataFrame) -> str:
    """Strategies as rows, splits as columns, cells ``mean ± std`` in percent."""
    cells = table.assign(cell=[f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in
                               zip(table["local_accuracy_mean"], table["local_accuracy_std"])])
    pivot = cells.pivot(index="strategy", columns="split", values="cell")
    pivot = pivot.reindex(index=list(dict.fromkeys(table["strategy"])), columns=list(dict.fromkeys(table["split"])))
    lines = ["| averaged layers | " + " | ".join(pivot.columns) + " |",
             "|---|" + "---|" * len(pivot.columns)]
    lines += [f"| {strategy} | " + " | ".join(row) + " |" for strategy, row in pivot.iterrows()]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())
