"""Barriers of the average of K models (federated clients) against the clients' own metrics.

With two models the barrier at α=½ compares the midpoint with the mean of the endpoints; with K
clients the natural counterpart compares the weighted average θ̄ = Σ w_k θ_k with the mean of
the clients' metrics:

- ``full``: M(θ̄) − Σ_k w_k M(θ_k);
- ``group`` g: Σ_k w_k M(θ_k with group g taken from θ̄) − Σ_k w_k M(θ_k), the layer-wise
  version: each client averages only that group, the rest of its network stays its own.

The weights w_k are those of the average (the run's aggregation weights over all K clients),
so two equally weighted clients give the midpoint barrier.

Records go to ``points.jsonl`` like every analysis (docs/design.md §5), with ``base`` naming the
client whose other tensors a point uses (``kind=endpoint``: the client itself; ``kind=group``:
the client with group g averaged) and ``base`` null for the full average; ``alpha`` is null
(no point lies on a line). The table ``multimodel.csv`` has the columns of ``barriers.csv`` plus
``average`` and ``clients_mean``, with ``definition`` = ``average`` and ``reference`` = ``clients``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..config import FederatedConfig, validate
from ..core.averaging import full_average
from ..core.checkpoints import StateDict, load_state_dict
from ..core.groups import LayerGroup, layer_groups, tied_keys
from ..core.records import SCHEMA, RunDir, point_key
from ..core.runs import AVERAGE, round_checkpoint
from ..errors import LayerLMCError
from ..evaluate import Evaluator
from ..evaluate.options import EvalOptions, analysis_inputs, build_evaluator
from ..specs import build_data, build_model

log = logging.getLogger("layerlmc")
COLUMNS = ("step", "unit", "kind", "group", "group_index", "base", "order", "split", "metric",
           "definition", "reference", "average", "clients_mean", "value")


def multi_model_points(
    evaluator: Evaluator, states: Mapping[str, StateDict], weights: Sequence[float], groups: Sequence[LayerGroup],
    *, step: int | None = None, unit: str | None = None, run: RunDir | None = None, progress: bool | None = None,
) -> list[dict]:
    """Point records of every client, the full average and each client with one group averaged.

    ``states`` maps client names to state dicts on the evaluator's device, ``weights`` are the
    aggregation weights in the same order. With ``run``, stored records are reused and new
    ones appended as they are evaluated.
    """
    names = list(states)
    average = full_average(list(states.values()), weights)
    stored = {point_key(r): r for r in run.read_points()} if run is not None else {}
    todo = [("endpoint", None, name) for name in names] + [("full", None, None)]
    todo += [("group", group, name) for group in groups for name in names]
    records: list[dict] = []
    with tqdm(total=len(todo), desc=f"multi-model {unit or ''} {step if step is not None else ''}".strip(),
              unit="model", disable=None if progress is None else not progress) as bar:
        for kind, group, name in todo:
            missing, found = [], []
            for split in evaluator.splits:
                record = _record(kind, group, name, split, step, unit)
                old = stored.get(point_key(record))
                (found if old is not None else missing).append(old if old is not None else record)
            records += found
            if missing:
                if kind == "endpoint":
                    state = states[name]
                elif kind == "full":
                    state = average
                else:
                    state = {**states[name], **{k: average[k] for k in group.keys}}
                for record in missing:
                    metrics = evaluator.evaluate(state, record["split"])
                    record.update(loss=metrics.loss, accuracy=metrics.accuracy, n=metrics.n)
                records += missing
                if run is not None:
                    run.append_points(missing)
            bar.update()
    return records


def _record(kind: str, group: LayerGroup | None, client: str | None, split: str, step, unit) -> dict:
    return {
        "schema": SCHEMA, "step": step, "unit": unit, "kind": kind,
        "group": group.name if group is not None else "full",
        "group_index": group.index if group is not None else None, "base": client, "order": None,
        "alpha": None, "direction": None, "sigma": None, "sample": None, "split": split,
    }


def multi_model_barriers(records: Sequence[Mapping], weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The ``multimodel.csv`` table from point records: per step, split and metric, the full
    average's barrier and every group's against the clients' mean.

    Means over clients use ``weights`` (client name → aggregation weight; equal weights when
    None), the weights of the average itself: with two equally weighted clients this is the
    midpoint barrier.
    """
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame["error"] = 1.0 - frame["accuracy"]
    # the full average's record has no client (base null, read back as NaN)
    frame["weight"] = [weights[b] if weights is not None and isinstance(b, str) else 1.0 for b in frame["base"]]
    frame["step"] = frame["step"].astype("Int64")
    rows = []
    for (step, split), part in frame.groupby(["step", "split"], sort=True, dropna=False):
        unit = part["unit"].iloc[0]
        clients = part[part["kind"] == "endpoint"]
        for metric in ("loss", "error"):
            mean = _weighted(clients, metric)
            full = part[part["kind"] == "full"]
            if not full.empty:
                value = float(full[metric].iloc[0])
                rows.append(_row(step, unit, "full", "full", None, split, metric, value, mean))
            groups = part[part["kind"] == "group"]
            for (index, group), of_group in groups.groupby(["group_index", "group"], sort=True):
                value = _weighted(of_group, metric)
                rows.append(_row(step, unit, "group", group, int(index), split, metric, value, mean))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["group_index"] = table["group_index"].astype("Int64")
    return table


def _weighted(rows: pd.DataFrame, metric: str) -> float:
    return float((rows[metric] * rows["weight"]).sum() / rows["weight"].sum())


def _row(step, unit, kind, group, index, split, metric, average, mean) -> dict:
    return {"step": None if pd.isna(step) else int(step), "unit": unit, "kind": kind, "group": group,
            "group_index": index, "base": None, "order": None, "split": split, "metric": metric,
            "definition": "average", "reference": "clients", "average": average, "clients_mean": mean,
            "value": average - mean}


def analyse_federated_run(
    folder: str | Path, rounds: Sequence[int] | None = None, *, max_examples: int | None = None,
    device: str | None = None, precision: str | None = None, progress: bool | None = None,
) -> pd.DataFrame:
    """Multi-model barriers of a federated run's clients at ``rounds`` (default: the config's
    ``multimodel.every``, or the last round), written to ``FOLDER/multimodel``."""
    folder = Path(folder)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise LayerLMCError(f"{folder} is not a federated run: it has no config.yaml")
    config = validate(FederatedConfig, yaml.safe_load(config_file.read_text()) or {})
    clients = pd.read_csv(folder / "clients.csv")
    names, weights = list(clients["name"]), [float(w) for w in clients["weight"]]
    available = sorted(int(p.stem.split("_")[1]) for p in (folder / "checkpoints" / AVERAGE).glob("round_*.safetensors"))
    available = [r for r in available if r > 0]
    if not available:
        raise LayerLMCError(f"{folder} has no completed round to analyse")
    if rounds is None:
        every = config.multimodel.every
        rounds = available[every - 1::every] if every else []
        rounds = sorted(set(rounds) | {available[-1]})
    missing = [r for r in rounds if r not in available]
    if missing:
        raise LayerLMCError(f"no completed round {missing[0]} in {folder}; completed: {available[0]}..{available[-1]}")
    max_examples = max_examples or config.multimodel.max_examples
    model = build_model(config.model.name, config.model.args)
    data = build_data(config.data.name, config.data.args)
    splits = [config.data.train_split, config.data.test_split]
    first = load_state_dict(round_checkpoint(folder, names[0], rounds[0]))
    evaluation = EvalOptions(splits=splits, max_examples=max_examples, seed=0,
                             batch_size=config.eval_batch_size, device=device or config.device,
                             precision=precision or config.multimodel.precision)
    evaluator = build_evaluator(model, data, first, evaluation=evaluation)
    groups = layer_groups(first, config.aggregate.groups, tied=tied_keys(model))
    groups = [g for g in groups if any(first[k].is_floating_point() for k in g.keys)]
    run = RunDir(folder / "multimodel")
    run.claim(analysis_inputs(model, data, evaluation, config.aggregate.groups, (),
                              precision=evaluator.precision),
              {"federated run": str(folder), "rounds": list(rounds), "max_examples": max_examples,
               "precision": evaluator.precision}, str(evaluator.device))
    records: list[dict] = []
    with run.status_on_error():
        for round_ in rounds:
            states = {n: {k: v.to(evaluator.device) for k, v in load_state_dict(round_checkpoint(folder, n, round_)).items()}
                      for n in names}
            records += multi_model_points(evaluator, states, weights, groups, step=round_, unit="round", run=run,
                                          progress=progress)
    table = multi_model_barriers(records, dict(zip(names, weights)))
    run.write_file("multimodel.csv", table.to_csv(index=False))
    run.finish("complete")
    return table
