"""Federated training: K clients from one initialization, local training, (partial) averaging.

Each round, the participating clients train locally (through an executor, so the clients of a
round can run anywhere), the server averages the selected keys of their states with
:func:`aggregate`, and every client takes the averaged keys while keeping the rest
(personalization). Every round is a pure function of the previous round's states, the
optimizer states and the config, so a killed run resumes from its last complete round to the
same weights.

Layout of a run folder::

    config.yaml, run.json, clients.csv (the partition and the aggregation weights)
    history.jsonl        one line per (round, model, split): loss/accuracy of every client's
                         personalized model on its own local test data, and of the average on
                         the global test split
    checkpoints/client_NN/round_RRRR.safetensors   the client's local model at the end of the
                         round's local training (what the server averages; round 0 = the shared
                         initialization); `layerlmc trajectory RUN --pair client_00,client_01`
    checkpoints/average/round_RRRR.safetensors     the weighted average of those models
    checkpoints/optimizers_RRRR.pt                 every client's optimizer state (the last round)
    multimodel/          barriers of the K-client average (layerlmc.analyses.multimodel)
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..analyses.executors import Shared, using_executor
from ..config import AggregateConfig, FederatedConfig, to_dict
from ..core.averaging import aggregate, full_average  # noqa: F401  (aggregate: its import path of 0.1)
from ..core.checkpoints import StateDict, load_state_dict, save_state_dict
from ..core.groups import LayerGroup, layer_groups, tied_keys
from ..core.records import RunDir, append_jsonl
from ..core.runs import AVERAGE, client_name, optimizers_path, round_checkpoint
from ..data.partition import partition, summary_table
from ..errors import LayerLMCError
from ..evaluate import Evaluator, Split, prepare_splits, resolve_device
from ..specs import build_data, build_model
from .runner import (
    NOT_WEIGHTS,
    claim_training,
    make_optimizer,
    read_history,
    save_optimizer,
    train_epoch,
)

log = logging.getLogger("layerlmc")
#: Config fields that change neither the clients' weights nor the history's numbers of a round.
FEDERATED_NOT_WEIGHTS = (*NOT_WEIGHTS, "multimodel", "executor", "address")


def client_weights(sizes: Sequence[int], batch_size: int, mode: str) -> list[float]:
    """Aggregation weights from the clients' local train sizes, normalised to sum 1: ``examples``
    (FedAvg), ``batches`` (the number of local batches, the paper's code) or ``uniform``."""
    if mode == "examples":
        raw = [float(n) for n in sizes]
    elif mode == "batches":
        raw = [float(-(-n // batch_size)) for n in sizes]
    else:
        raw = [1.0] * len(sizes)
    total = sum(raw)
    return [w / total for w in raw]


def averaged_groups(state: StateDict, model: torch.nn.Module, config: AggregateConfig) -> list[LayerGroup]:
    """The layer groups whose keys the server averages, each narrowed to the selected keys.

    A key is selected when it or its group's name matches an ``include`` pattern (all keys
    when there is none) and neither matches an ``exclude`` pattern; integer keys never are.
    A pattern that matches nothing is a user error that lists the groups.
    """
    groups = layer_groups(state, config.groups, tied=tied_keys(model))
    names = [g.name for g in groups]

    def matches(pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(g.name, pattern) or any(fnmatch.fnmatchcase(k, pattern) for k in g.keys)
                   for g in groups)

    for option, patterns in (("include", config.include), ("exclude", config.exclude)):
        for pattern in patterns:
            if not matches(pattern):
                raise LayerLMCError(
                    f"aggregate.{option} pattern '{pattern}' matches no layer group or key; groups: {', '.join(names)}"
                )

    def selected(group: LayerGroup, key: str) -> bool:
        def hit(patterns: Sequence[str]) -> bool:
            return any(fnmatch.fnmatchcase(group.name, p) or fnmatch.fnmatchcase(key, p) for p in patterns)

        return (not config.include or hit(config.include)) and not hit(config.exclude)

    chosen = []
    for group in groups:
        keys = tuple(k for k in group.keys if state[k].is_floating_point() and selected(group, k))
        if keys:
            chosen.append(LayerGroup(group.index, group.name, keys))
    if not chosen and config.strategy != "none":
        raise LayerLMCError("aggregate.include/exclude leave no floating key to average; groups: " + ", ".join(names))
    return chosen


def round_keys(groups: Sequence[LayerGroup], strategy: str, round_: int) -> list[str]:
    """The keys averaged in 1-based round ``round_``."""
    if strategy == "none" or not groups:
        return []
    if strategy == "round-robin":
        return list(groups[(round_ - 1) % len(groups)].keys)
    return [k for g in groups for k in g.keys]


@dataclass
class ClientTask:
    """Everything one client's local training in one round depends on."""

    client: int
    round: int
    state: StateDict
    optimizer_state: dict | None
    train: Shared[Split]  # shared once per run, not shipped with every round's task


@dataclass
class ClientResult:
    client: int
    state: StateDict
    optimizer_state: dict
    train_loss: float


class LocalTraining:
    """The pure function a round maps over its participating clients (picklable for a cluster)."""

    def __init__(self, config: FederatedConfig, device: torch.device):
        self.config = config
        self.device = device
        # built here and copied per task: a Ray worker then needs no access to the user's model
        # file (every tensor is overwritten by the client's state, so any instance will do)
        self.template = build_model(config.model.name, config.model.args).cpu()

    def __call__(self, task: ClientTask) -> ClientResult:
        config = self.config
        model = copy.deepcopy(self.template).to(self.device)
        model.load_state_dict(task.state)
        train = task.train.get()
        if train.labels.device != self.device:  # shipped to a worker on the CPU
            train = Split(train.name, train.inputs.to(self.device), train.labels.to(self.device))
        optimizer = make_optimizer(config, model)
        if task.optimizer_state is not None:
            optimizer.load_state_dict(task.optimizer_state)
        seed = config.seed * 1_000_003 + task.client
        # local_steps replaces local_epochs: one pass of that many batches per round
        passes = 1 if config.local_steps else config.local_epochs
        total_epochs = config.rounds * passes
        losses = []
        for local in range(1, passes + 1):
            epoch = (task.round - 1) * passes + local
            _, loss = train_epoch(model, optimizer, train, config, seed, epoch, total_epochs,
                                  where=f"client {task.client} in round {task.round}", batches=config.local_steps)
            losses.append(loss)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return ClientResult(task.client, state, optimizer.state_dict(), sum(losses) / len(losses))


def participants(config: FederatedConfig, round_: int) -> list[int]:
    """The clients that train in a round: all, or a seeded sample of ⌊``fraction``·K⌋ (at least one)."""
    # floor, as FedAvg's max(⌊C·K⌋, 1); the epsilon keeps 0.29 × 100 at 29
    count = max(1, math.floor(config.fraction * config.clients + 1e-9))
    if count >= config.clients:
        return list(range(config.clients))
    generator = torch.Generator().manual_seed(config.seed * 7_919 + round_)
    return sorted(torch.randperm(config.clients, generator=generator)[:count].tolist())


def federate(config: FederatedConfig, out: str | Path | None = None, progress: bool | None = None) -> Path:
    """Simulate ``config`` into ``out`` (default ``runs/<name>``); returns the folder.

    Rerunning continues an interrupted run from its last complete round; a folder trained with
    another config is refused.
    """
    folder = Path(out or config.out or Path("runs") / config.name)
    resolved = to_dict(config)
    resolved["out"] = str(folder)
    run = RunDir(folder)
    claim_training(run, resolved, unit="round", not_weights=FEDERATED_NOT_WEIGHTS)
    device = resolve_device(config.device)
    data = build_data(config.data.name, config.data.args)
    for name, text in data.files.items():  # e.g. a text dataset's vocabulary
        run.write_file(name, text)
    train_name, test_name = config.data.train_split, config.data.test_split
    pool = prepare_splits(data, [train_name], max_examples=config.partition.max_examples,
                          seed=config.partition.seed, device=device)[train_name]
    p = config.partition
    parts = partition(pool.labels.cpu(), config.clients, p.scheme, seed=p.seed, classes_per_client=p.classes_per_client,
                      alpha=p.alpha, min_size=p.min_size, test_fraction=p.test_fraction)
    names = [client_name(i, config.clients) for i in range(config.clients)]
    local_train = [Split(f"{n}/train", pool.inputs[s.train.to(device)], pool.labels[s.train.to(device)])
                   for n, s in zip(names, parts)]
    empty = [n for n, split in zip(names, local_train) if len(split) == 0]
    if empty:
        raise LayerLMCError(f"{len(empty)} clients get no local train data ({', '.join(empty[:4])}); "
                            "use fewer clients, a smaller partition.test_fraction or another scheme")
    weights = client_weights([len(s) for s in local_train], config.batch_size, config.aggregate.weights)
    table = summary_table(pool.labels.cpu(), parts)
    table.insert(1, "name", names)
    table["weight"] = weights
    run.write_file("clients.csv", table.to_csv(index=False))

    local_test = {f"{n}/test": Split(f"{n}/test", pool.inputs[s.test.to(device)], pool.labels[s.test.to(device)])
                  for n, s in zip(names, parts) if len(s.test)}
    global_test = prepare_splits(data, [test_name], max_examples=config.eval_max_examples, seed=0, device=device)
    torch.manual_seed(config.init_seed)
    model = build_model(config.model.name, config.model.args).to(device)
    evaluator = Evaluator(model, {**local_test, **global_test}, config.eval_batch_size)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    groups = averaged_groups(init, model, config.aggregate)
    with run.status_on_error(), using_executor(config.executor, config.address, device=device) as executor:
        if executor.name == "local":
            shared_train = [executor.share(split) for split in local_train]
        else:
            shared_train = [executor.share(Split(s.name, s.inputs.cpu(), s.labels.cpu())) for s in local_train]
        done, states, optimizers = _resume(folder, names, init, weights, groups, config.aggregate.strategy, device)
        logged = {(r["round"], r["model"], r["split"]) for r in read_federated_history(folder)}
        if done == 0 and not round_checkpoint(folder, AVERAGE, 0).exists():
            for name in names:
                save_state_dict(init, round_checkpoint(folder, name, 0))
            save_state_dict(init, round_checkpoint(folder, AVERAGE, 0))
        initial = _log_round(folder, 0, names, [init] * len(names), init, evaluator, test_name, logged,
                             participated=set(), losses={})
        if done:
            log.info("%s: resuming after round %d of %d", folder, done, config.rounds)
        local_training = LocalTraining(config, device)
        bar = tqdm(range(done + 1, config.rounds + 1), desc="rounds", unit="round",
                   disable=None if progress is None else not progress)
        for round_ in bar:
            began = time.perf_counter()
            chosen = participants(config, round_)
            tasks = [ClientTask(i, round_, states[i], optimizers[i], shared_train[i]) for i in chosen]
            losses = {}
            for result in executor.map(local_training, tasks):
                states[result.client] = result.state
                optimizers[result.client] = result.optimizer_state
                losses[result.client] = result.train_loss
            for name, state in zip(names, states):
                save_state_dict(state, round_checkpoint(folder, name, round_))
            save_optimizer({n: o for n, o in zip(names, optimizers) if o is not None}, optimizers_path(folder, round_))
            average = full_average([states[i] for i in chosen], [weights[i] for i in chosen])
            shared = round_keys(groups, config.aggregate.strategy, round_)
            states = [{**state, **{k: average[k] for k in shared}} for state in states]
            record = _log_round(folder, round_, names, states, average, evaluator, test_name, logged,
                                participated=set(chosen), losses=losses)
            # the average's checkpoint comes after the history: its presence marks the round complete
            save_state_dict(average, round_checkpoint(folder, AVERAGE, round_))
            optimizers_path(folder, round_ - 1).unlink(missing_ok=True)
            bar.set_postfix(local_acc=f"{record['mean']:.3f}", global_acc=f"{record['global']:.3f}")
            if round_ >= 2 and record["mean"] <= initial["mean"] + 0.01:
                # dead shared layers make every later number (and every barrier) meaningless
                log.warning("round %d: the clients' local accuracy (%.3f) is still at its initial %.3f; "
                            "lower optimizer.lr or add a warmup", round_, record["mean"], initial["mean"])
            log.info("round %d/%d: clients' local test accuracy %.4f ± %.4f, average's test accuracy %.4f (%.0f s)",
                     round_, config.rounds, record["mean"], record["std"], record["global"],
                     time.perf_counter() - began)
    run.finish("complete")
    return folder


def _resume(folder, names, init, weights, groups, strategy, device):
    """The last complete round and the clients' states (after that round's averaging) and
    optimizer states; round 0 and fresh optimizers when nothing is stored."""
    averages = sorted(int(p.stem.split("_")[1]) for p in (Path(folder) / "checkpoints" / AVERAGE).glob("round_*.safetensors"))
    for round_ in reversed(averages):
        if round_ == 0:
            break
        if not optimizers_path(folder, round_).exists() or not all(
                round_checkpoint(folder, n, round_).exists() for n in names):
            continue
        states = [load_state_dict(round_checkpoint(folder, n, round_)) for n in names]
        states = [{k: v.to(device) for k, v in s.items()} for s in states]
        average = {k: v.to(device) for k, v in load_state_dict(round_checkpoint(folder, AVERAGE, round_)).items()}
        shared = round_keys(groups, strategy, round_)
        states = [{**s, **{k: average[k] for k in shared}} for s in states]
        stored = torch.load(optimizers_path(folder, round_), map_location=device, weights_only=True)
        return round_, states, [stored.get(n) for n in names]
    return 0, [dict(init) for _ in names], [None] * len(names)


def read_federated_history(folder: str | Path) -> list[dict]:
    """``history.jsonl`` of a federated run, the last record per (round, model, split)."""
    return read_history(Path(folder), key=("round", "model", "split"))


def _log_round(folder, round_, names, states, average, evaluator, test_name, logged, participated, losses) -> dict:
    """History lines of a round (those not logged yet) and the round's summary numbers."""
    records = []
    accuracies = []
    for index, (name, state) in enumerate(zip(names, states)):
        split = f"{name}/test"
        if split not in evaluator.splits:
            continue
        metrics = evaluator.evaluate(state, split)
        accuracies.append(metrics.accuracy)
        if (round_, name, "local_test") not in logged:
            records.append({"round": round_, "model": name, "split": "local_test", "participated": index in participated,
                            "train_loss": losses.get(index), "loss": metrics.loss, "accuracy": metrics.accuracy,
                            "n": metrics.n})
    metrics = evaluator.evaluate(average, test_name)
    if (round_, AVERAGE, test_name) not in logged:
        records.append({"round": round_, "model": AVERAGE, "split": test_name, "participated": None,
                        "train_loss": None, "loss": metrics.loss, "accuracy": metrics.accuracy, "n": metrics.n})
    if records:
        append_jsonl(Path(folder) / "history.jsonl", records)
    mean = sum(accuracies) / len(accuracies) if accuracies else float("nan")
    std = (sum((a - mean) ** 2 for a in accuracies) / len(accuracies)) ** 0.5 if accuracies else float("nan")
    return {"mean": mean, "std": std, "global": metrics.accuracy}


def round_summary(folder: str | Path) -> pd.DataFrame:
    """Per round: the clients' personalized (local test) loss and accuracy, mean ± std over
    clients, and the average model's loss and accuracy on the global test split."""
    history = pd.DataFrame(read_federated_history(folder))
    if history.empty:
        return pd.DataFrame(columns=["round", "local_accuracy_mean", "local_accuracy_std", "local_loss_mean",
                                     "average_accuracy", "average_loss"])
    local = history[history["split"] == "local_test"].groupby("round")
    table = pd.DataFrame({
        "local_accuracy_mean": local["accuracy"].mean(),
        # population std over the clients (ddof=0): the clients are all there is, not a sample
        "local_accuracy_std": local["accuracy"].std(ddof=0),
        "local_loss_mean": local["loss"].mean(),
    })
    average = history[history["model"] == AVERAGE].set_index("round")
    table["average_accuracy"] = average["accuracy"]
    table["average_loss"] = average["loss"]
    return table.reset_index()
