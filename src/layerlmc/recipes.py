"""``layerlmc reproduce``: the paper's studies at a scale that fits two CPU cores.

The paper trains ResNet-18 without normalisation on CIFAR-10 for 200 epochs (PAPER.md §2.1);
here the same protocol runs on Fashion-MNIST with an 8-layer CNN without normalisation: two
runs from one initialization that differ only in data order, a checkpoint every epoch,
barriers against the two full models at α=½ (the paper's definition), on fixed subsets of
train and test. ``configs/pair_fmnist_cnn.yaml`` is the training config; the paper's own
setting needs a GPU and the CIFAR-10 files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .analyses import find_checkpoints, trajectory
from .config import TrainConfig, load_config
from .errors import unknown
from .specs import build_data, build_model
from .train import train_runs

CONFIG = Path(__file__).parent / "configs" / "pair_fmnist_cnn.yaml"
FIGURES = {
    "fig1": {"layerwise": True, "cumulative": ()},
    "fig3": {"layerwise": False, "cumulative": ("shallow", "deep")},
}


@dataclass
class TrainedPair:
    """A recipe's training run: its folder, a fresh model, the data and both runs' checkpoints
    by epoch."""

    run: Path
    config: TrainConfig
    model: torch.nn.Module
    data: dict
    a: dict[int, Path]
    b: dict[int, Path]


def train_pair(
    config_file: str | Path, out: str | Path, *, epochs: int | None = None, device: str = "auto",
    progress: bool | None = None, overrides: Sequence[str] = (),
) -> TrainedPair:
    """Train (or resume, or reuse) the two runs of ``config_file`` into ``out/<name>``."""
    overrides = [f"device={device}", *([f"epochs={epochs}"] if epochs else []), *overrides]
    config: TrainConfig = load_config(TrainConfig, config_file, overrides)
    run = train_runs(config, Path(out) / config.name, progress=progress)
    return TrainedPair(
        run, config, build_model(config.model.name, config.model.args), build_data(config.data.name, config.data.args),
        find_checkpoints(run / "checkpoints" / "a"), find_checkpoints(run / "checkpoints" / "b"),
    )


def reproduce(
    figure: str, out: str | Path = "runs/reproduce", epochs: int | None = None, every: int = 2,
    max_examples: int = 5000, device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Train the pair (once; shared by every figure) and analyse it as ``figure`` does.

    Returns the barrier table, the distance table and the analysis folder.
    """
    if figure not in FIGURES:
        raise unknown("figure", figure, FIGURES)
    pair = train_pair(CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / figure
    settings = FIGURES[figure]
    barriers, distances = trajectory(
        pair.model, pair.a, pair.b, pair.data, analysis, every=every, max_examples=max_examples, device=device, progress=progress,
        layerwise=settings["layerwise"], cumulative=settings["cumulative"],
        config={"recipe": figure, "training": str(pair.run), "every": every, "max_examples": max_examples,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}},
    )
    return barriers, distances, analysis


def reproduce_robustness(
    out: str | Path = "runs/reproduce", epochs: int | None = None, every: int = 2, samples: int = 5,
    max_examples: int = 2000, device: str = "auto", progress: bool | None = None,
) -> tuple[pd.DataFrame, Path]:
    """The averaging direction vs random directions of the same norm (PAPER.md §4.1) on the
    training run of fig1/fig3, every ``every``-th epoch, ``samples`` directions per group and base,
    on a fixed test subset. Returns the ``robustness.csv`` table and the analysis folder."""
    from .analyses import robustness

    pair = train_pair(CONFIG, out, epochs=epochs, device=device, progress=progress)
    analysis = Path(out) / "robustness"
    table = robustness(
        pair.model, pair.a, pair.b, pair.data, analysis, samples=samples, every=every, splits=["test"], max_examples=max_examples, device=device,
        progress=progress,
        config={"recipe": "robustness", "training": str(pair.run), "every": every, "samples": samples,
                "max_examples": max_examples},
    )
    return table, analysis


FEDERATED_CONFIG = Path(__file__).parent / "configs" / "fed_fmnist_dirichlet.yaml"
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
    from .config import FederatedConfig
    from .train.federated import federate, round_summary

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
