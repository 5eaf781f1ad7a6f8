"""Full-network, layer-wise and cumulative barriers of two endpoints: the core analysis."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path as FilePath

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.barriers import compute_barriers
from ..core.checkpoints import StateDict, check_pair, load_state_dict, reorder_like
from ..core.options import flat_options
from ..core.paths import (
    Path,
    Point,
    interpolate,
)
from ..core.plan import PathOptions, plan_paths
from ..core.records import SCHEMA, RunDir, point_key, short_hash
from ..evaluate import (
    Evaluator,
    Job,
    Metrics,
)
from ..evaluate.batchnorm import batchnorm_modules
from ..evaluate.options import EvalOptions, build_evaluator

log = logging.getLogger("layerlmc")


def endpoint_paths() -> list[Path]:
    empty = frozenset()
    return [
        Path("endpoint", "full", None, "a", None, empty, (0.0,)),
        Path("endpoint", "full", None, "b", None, empty, (1.0,)),
    ]


def evaluate_paths(
    evaluator: Evaluator,
    a: StateDict,
    b: StateDict,
    paths: Sequence[Path],
    *,
    run: RunDir | None = None,
    step: int | None = None,
    unit: str | None = None,
    progress: bool | None = None,
    stored: Iterable[Mapping] = (),
) -> list[dict]:
    """Point records (docs/design.md §5) for the endpoints and every point of ``paths``.

    Each distinct network state is evaluated once per split of ``evaluator``: points equal
    to an endpoint (e.g. a group path at α=0 with base ``a``) or to each other (the first
    prefix of a cumulative path and that group's own path) reuse one evaluation. With
    ``run``, records already in its ``points.jsonl`` are not evaluated again and new ones are
    appended as each point finishes; records in ``stored`` are reused in the same way (a
    worker given the endpoints' records by its driver).

    The evaluator's BatchNorm policy (``evaluator.bn``) decides the statistics of each state:
    under ``keep-base`` they are left out of every path's interpolated keys (so the full path
    at α=1 is b's weights with a's statistics, not model b), under ``recompute`` they are
    estimated once per state and shared by its splits.
    """
    prepared = evaluator.splits
    a = {k: v.to(evaluator.device) for k, v in a.items()}
    b = {k: v.to(evaluator.device) for k, v in b.items()}
    float_keys = [k for k, v in a.items() if v.is_floating_point()]
    # a key equal in a and b is the same in every point (all of them at a shared initialization)
    same = [torch.equal(a[k], b[k]) for k in float_keys]

    stored = {point_key(r): r for r in [*(run.read_points() if run is not None else ()), *stored]}
    known: dict[tuple, Metrics] = {}  # (b-weights, split) → metrics
    records: list[dict] = []
    todo: list[tuple[Point, Point, tuple, list[str]]] = []
    for path in [*endpoint_paths(), *paths]:
        moving = moving_path(path, evaluator)
        for point in path.points():
            # the state is built, and known, by the keys that actually move
            state_point = Point(moving, point.alpha) if moving is not path else point
            b_weights = state_point.b_weights(float_keys)
            weights = tuple(0.0 if equal else w for equal, w in zip(same, b_weights))
            missing = []
            for split in prepared:
                record = _record(point, split, step, unit)
                old = stored.get(point_key(record))
                if old is None:
                    missing.append(split)
                    continue
                records.append(old)
                known.setdefault((weights, split), Metrics(old["loss"], old["accuracy"], old["n"]))
            if missing:
                todo.append((point, state_point, weights, missing))

    fresh_states = len({w for _, _, w, m in todo if any((w, s) not in known for s in m)})
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in prepared.items())
    if fresh_states:
        log.info("evaluating %d network states (%s examples)%s", fresh_states, sizes,
                 f"; {len(stored)} records already stored" if stored else "")
    elif stored and run is not None:
        log.info("all points already stored in %s; nothing to evaluate", run.points_file)
    with tqdm(total=len(todo), desc="evaluating", unit="point", disable=_no_bar(progress, fresh_states)) as bar:
        if evaluator.kind != "plain":
            _evaluate_batched(evaluator, a, b, todo, known, float_keys, same, records, run, bar,
                              step, unit)
            return records
        for point, state_point, weights, missing in todo:
            state = None
            new = []
            for split in missing:
                metrics = known.get((weights, split))
                if metrics is None:
                    if state is None:
                        state = evaluator.prepare(interpolate(a, b, state_point))
                    metrics = evaluator.evaluate(state, split)
                    known[(weights, split)] = metrics
                new.append(_record(point, split, step, unit, metrics))
            records.extend(new)
            if run is not None:
                run.append_points(new)
            bar.update()
    return records


#: the most points a batched evaluator is handed at once
CHUNK_POINTS = 64


def _evaluate_batched(
    evaluator: Evaluator, a: StateDict, b: StateDict, todo: list, known: dict,
    float_keys: list[str], same: list[bool], records: list[dict], run: RunDir | None, bar,
    step, unit,
) -> None:
    """:func:`evaluate_paths`' loop for an evaluator that takes many states at once
    (``evaluate_many``): each state is handed over with its base and the keys it changes, in
    chunks of points that share a base, and records are written in the plain loop's order.

    A chunk holds at most :data:`CHUNK_POINTS` states whose new tensors together take at most
    the bytes of one state (at least one point), so memory stays bounded whatever the path."""
    bases = {"a": a, "b": b}
    budget = sum(a[k].numel() * a[k].element_size() for k in float_keys)
    unique: dict[tuple, tuple[Point, set[str]]] = {}
    for _, state_point, weights, missing in todo:
        splits = {s for s in missing if (weights, s) not in known}
        if splits:
            unique.setdefault(weights, (state_point, set()))[1].update(splits)
    entries = []
    for weights, (state_point, _) in unique.items():
        base = state_point.path.base or "a"
        # a key moves off the base where b's weight differs from the base's (a key equal in a
        # and b never moves)
        at_base = 1.0 if base == "b" else 0.0
        changed = frozenset(k for k, w, equal in zip(float_keys, state_point.b_weights(float_keys), same)
                            if not equal and w != at_base)
        size = sum(a[k].numel() * a[k].element_size() for k in changed)
        entries.append((weights, state_point, base, changed, size))
    # by base, smallest change first: an endpoint shares its chunk with the points it is the
    # base of (its own evaluation is the run they reuse), single groups fill one chunk, and
    # a point that changes everything (the full path) comes last, where nothing is reused
    entries.sort(key=lambda entry: (entry[2], entry[4]))
    chunks: list[list[tuple]] = []
    used = 0
    for weights, state_point, base, changed, size in entries:
        current = chunks[-1] if chunks else None
        if (current is None or current[0][2] != base or len(current) >= CHUNK_POINTS
                or used + size > budget):
            chunks.append([])
            used = 0
        chunks[-1].append((weights, state_point, base, changed))
        used += size
    emitted = 0
    for chunk in chunks:
        jobs = [Job(interpolate(a, b, state_point), bases[base], changed)
                for _, state_point, base, changed in chunk]
        for split in evaluator.splits:
            chosen = [i for i, item in enumerate(chunk) if split in unique[item[0]][1]]
            if not chosen:
                continue
            for i, metrics in zip(chosen, evaluator.evaluate_many([jobs[i] for i in chosen], split)):
                known[(chunk[i][0], split)] = metrics
        del jobs
        emitted = _emit_done(todo, emitted, known, records, run, bar, step, unit)
    _emit_done(todo, emitted, known, records, run, bar, step, unit)


def _emit_done(todo: list, emitted: int, known: dict, records: list[dict], run: RunDir | None,
               bar, step, unit) -> int:
    """Append the records of the points from ``emitted`` on whose splits are all known, in
    order; returns how many points are emitted now."""
    while emitted < len(todo):
        point, _, weights, missing = todo[emitted]
        if any((weights, split) not in known for split in missing):
            break
        new = [_record(point, split, step, unit, known[(weights, split)]) for split in missing]
        records.extend(new)
        if run is not None:
            run.append_points(new)
        bar.update()
        emitted += 1
    return emitted


def moving_path(path: Path, evaluator: Evaluator) -> Path:
    """``path`` as the evaluator's BatchNorm policy moves it: under ``keep-base`` the running
    statistics are not interpolated but come from the base (``a``'s on the full path)."""
    if evaluator.bn != "keep-base" or not path.keys & evaluator.bn_keys:
        return path
    return dataclasses.replace(path, keys=path.keys - evaluator.bn_keys)


def _no_bar(progress: bool | None, work: int) -> bool | None:
    if progress is None:
        return None if work > 2 else True  # tqdm's None: shown on a terminal only
    return not progress


def _record(point: Point, split: str, step, unit, metrics: Metrics | None = None) -> dict:
    path = point.path
    record = {
        "schema": SCHEMA, "step": step, "unit": unit, "kind": path.kind, "group": path.group,
        "group_index": path.group_index, "base": path.base, "order": path.order,
        "alpha": point.alpha, "direction": None, "sigma": None, "sample": None, "split": split,
    }
    if metrics is not None:
        record.update(loss=metrics.loss, accuracy=metrics.accuracy, n=metrics.n)
    return record


def analysis_inputs(
    model: torch.nn.Module, data: Mapping[str, object], evaluation: EvalOptions,
    groups: str, patterns: Sequence[str], batchnorm: str | None = None, precision: str = "fp32",
) -> dict[str, str]:
    """What every stored number depends on besides the checkpoints; other options only add or
    drop points, so a run folder may be reused when these are equal.

    ``batchnorm`` is the evaluator's :attr:`~layerlmc.evaluate.Evaluator.bn_summary`
    (default: the ``interpolate`` policy); ``precision`` its
    :attr:`~layerlmc.evaluate.Evaluator.precision` (a folder written before precision was
    recorded counts as ``fp32``: :data:`~layerlmc.core.records.INPUT_DEFAULTS`).
    """
    if batchnorm is None:
        batchnorm = "interpolate" if batchnorm_modules(model) else "no BatchNorm"
    return {
        "model": short_hash(repr(model)),
        "data": data_digest(data),
        "example subset": (f"{evaluation.max_examples} examples, seed {evaluation.seed}"
                           if evaluation.max_examples else "all examples"),
        "grouping": f"{groups} {list(patterns)}" if patterns else groups,
        "BatchNorm policy": batchnorm,
        "precision": precision,
    }


@flat_options
def barriers(
    model: torch.nn.Module,
    a: StateDict | str | FilePath,
    b: StateDict | str | FilePath,
    data: Mapping[str, object],
    *,
    paths: PathOptions = PathOptions(),
    evaluation: EvalOptions = EvalOptions(),
    out: str | FilePath | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> pd.DataFrame:
    """Full-network, layer-wise and cumulative barriers between endpoints ``a`` and ``b``.

    ``a`` and ``b`` are state dicts or checkpoint paths; ``data`` maps split names to
    ``(inputs, labels)`` tensors or torch Datasets. Returns one row per barrier with the
    columns of ``barriers.csv`` (docs/design.md §5): ``value`` is the barrier of ``metric``
    (``loss`` = mean cross-entropy per example, ``error`` = 1 − accuracy) under
    ``definition`` (``midpoint``/``max``) and ``reference`` (``models``/``path``).

    ``paths`` (:class:`~layerlmc.core.plan.PathOptions`) says which paths and barriers,
    ``evaluation`` (:class:`~layerlmc.evaluate.options.EvalOptions`) on what and how; each of
    their fields may also be given as a keyword of its own (``max_examples=1000``).

    ``bn`` says what the running statistics of BatchNorm layers are at each evaluated state
    (docs/batchnorm.md): ``interpolate`` (blended with the weights), ``recompute`` (estimated
    afresh from ``bn_batches`` batches of ``bn_batch_size`` examples of split ``bn_split``),
    ``batch-stats`` (each evaluation batch's own) or ``keep-base`` (the path's base's; ``a``'s
    on the full path). The policy applies to the endpoints too.

    With ``out``, the run folder gets ``config.yaml``, ``run.json``, ``points.jsonl``,
    ``barriers.csv`` (and ``figures/``, which :func:`layerlmc.barriers` draws); calling again with the same ``out`` evaluates only
    points that are not stored yet. A folder computed with another BatchNorm policy is refused.

    ``evaluator`` (``plain``, ``incremental``, ``vmap``, ``auto``; docs/evaluators.md) changes
    how long the study takes, not its numbers; a folder may be continued with another.
    ``precision`` (``fp32``, ``bf16``, ``fp16``) runs every forward pass under
    ``torch.autocast`` to that dtype (``fp32``: none); it changes the numbers, so a folder
    computed in one precision is refused in another.
    """
    state_a = load_state_dict(a) if isinstance(a, (str, FilePath)) else dict(a)
    state_b = load_state_dict(b) if isinstance(b, (str, FilePath)) else dict(b)
    expected = model.state_dict()
    check_pair(state_a, state_b, expected)
    # groups follow the model's order, whatever order the files stored (safetensors sorts keys)
    state_a, state_b = reorder_like(state_a, expected), reorder_like(state_b, expected)
    planned = plan_paths(state_a, model, paths=paths)
    chosen = build_evaluator(model, data, state_a, evaluation=evaluation)
    run = None
    if out is not None:
        run = RunDir(out)
        inputs = {"checkpoint a": state_digest(state_a), "checkpoint b": state_digest(state_b),
                  **analysis_inputs(model, data, evaluation, paths.groups, paths.patterns,
                                    chosen.bn_summary, chosen.precision)}
        settings = dict(config) if config is not None else {
            "groups": paths.groups, "patterns": list(paths.patterns),
            "layers": list(paths.layers or []), "layerwise": paths.layerwise,
            "bases": list(paths.bases), "cumulative": list(paths.cumulative),
            "alphas": str(paths.alphas),
            "layer_alphas": None if paths.layer_alphas is None else str(paths.layer_alphas),
            "definitions": list(paths.definitions), "references": list(paths.references),
            "splits": list(evaluation.splits or []), "max_examples": evaluation.max_examples,
            "batch_size": evaluation.batch_size, "device": evaluation.device,
            "seed": evaluation.seed, "extrapolate": paths.extrapolate, "bn": evaluation.bn,
            "bn_batches": evaluation.bn_batches, "bn_batch_size": evaluation.bn_batch_size,
            "bn_split": evaluation.bn_split, "evaluator": evaluation.evaluator,
            "precision": evaluation.precision,
        }
        run.claim(inputs, settings, str(chosen.device))
    with run.status_on_error() if run is not None else contextlib.nullcontext():
        records = evaluate_paths(chosen, state_a, state_b, planned, run=run, progress=progress)
    table = compute_barriers(pd.DataFrame(records), paths.definitions, paths.references)
    if run is not None:
        run.write_barriers(table)
        run.finish("complete")
    return table


def state_digest(state: StateDict) -> str:
    """A digest of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def data_digest(data: Mapping[str, object]) -> str:
    """A digest of the splits' tensors (a Dataset split by its type and length only)."""
    digest = hashlib.sha256()
    for name in sorted(data):
        split = data[name]
        digest.update(name.encode())
        if isinstance(split, (tuple, list)) and len(split) == 2:
            for part in split:
                tensor = torch.as_tensor(part)
                digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{type(split).__name__}:{len(split) if hasattr(split, '__len__') else ''}".encode())
    return digest.hexdigest()[:16]
