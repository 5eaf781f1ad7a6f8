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

from ..core.barriers import check_choices, compute_barriers, needed_alphas
from ..core.checkpoints import StateDict, check_pair, load_state_dict, reorder_like
from ..core.groups import layer_groups, select_groups, tied_keys
from ..core.paths import (
    Path,
    Point,
    cumulative_paths,
    full_path,
    group_paths,
    interpolate,
    parse_alphas,
)
from ..core.records import SCHEMA, RunDir, point_key, short_hash
from ..evaluate import (
    Evaluator,
    EvaluatorSpec,
    Job,
    Metrics,
    check_precision,
    prepare_splits,
    resolve_device,
    statistics_batches,
)
from ..evaluate.auto import check_evaluator
from ..evaluate.batchnorm import batchnorm_modules, check_policy

log = logging.getLogger("layerlmc")


def plan_paths(
    state: StateDict,
    model: torch.nn.Module | None = None,
    *,
    groups: str = "module",
    patterns: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    layerwise: bool = True,
    bases: Sequence[str] = ("a", "b"),
    cumulative: Sequence[str] = (),
    alphas: str | Sequence[float] = "0:1:11",
    layer_alphas: str | Sequence[float] | None = None,
    definitions: Sequence[str] = ("midpoint",),
    references: Sequence[str] = ("models",),
    seed: int = 0,
    extrapolate: bool = False,
) -> list[Path]:
    """The paths a barrier study needs, each with only the α values some output uses.

    The full path gets the ``alphas`` grid (its curve is plotted); group and cumulative paths
    get ``layer_alphas`` (default: only what the barrier definitions need, i.e. α=½ for
    ``midpoint``; the ``alphas`` grid for ``max``) plus α=0 and 1 for the ``path`` reference.
    """
    definitions, references = as_list(definitions), as_list(references)
    bases, layers = as_list(bases), as_list(layers) or None
    cumulative = list(dict.fromkeys([cumulative] if isinstance(cumulative, str) else cumulative))
    check_choices(definitions, references)
    tied = tied_keys(model) if model is not None else ()
    # a group of integer tensors only (e.g. num_batches_tracked under --groups param) never moves
    group_list = [
        g for g in layer_groups(state, groups, patterns, tied=tied)
        if any(state[k].is_floating_point() for k in g.keys)
    ]
    float_keys = [k for k, v in state.items() if v.is_floating_point()]
    full_grid = parse_alphas(alphas, extrapolate)
    paths = [full_path(float_keys, _with_needed(full_grid, definitions, references))]
    if layer_alphas is not None:
        layer_grid = parse_alphas(layer_alphas, extrapolate)
    else:
        layer_grid = full_grid if "max" in definitions else ()
    layer_grid = _with_needed(layer_grid, definitions, references)
    if layerwise:
        paths += group_paths(select_groups(group_list, layers), bases, layer_grid)
    for order in cumulative:
        paths += cumulative_paths(group_list, order, bases, layer_grid, seed=seed)
    return paths


def as_list(values: str | Sequence[str] | None) -> list[str]:
    """Options given as a comma-separated string or a sequence, without repeats, in order."""
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(",")
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def _with_needed(grid, definitions, references) -> tuple[float, ...]:
    return tuple(sorted(set(grid) | needed_alphas(definitions, references, grid)))


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
    """Point records (DESIGN.md §4) for the endpoints and every point of ``paths``.

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


def build_evaluator(
    model: torch.nn.Module, data: Mapping[str, object], state: StateDict, splits: Sequence[str] | None,
    max_examples: int | None, seed: int, batch_size: int, device: str, *,
    bn: str = "interpolate", bn_batches: int = 10, bn_batch_size: int | None = None,
    bn_split: str = "train", evaluator: str = "plain", precision: str = "fp32",
) -> Evaluator:
    """Splits loaded once onto the device, and the labels checked against the model's outputs at
    ``state`` before anything is written.

    ``bn`` is the BatchNorm policy (:data:`~layerlmc.evaluate.BN_POLICIES`); under
    ``recompute`` the statistics of every state come from ``bn_batches`` batches of
    ``bn_batch_size`` (default ``batch_size``) examples of split ``bn_split``, seeded by
    ``seed`` (:func:`~layerlmc.evaluate.statistics_batches`).

    ``evaluator`` picks how states are evaluated (:data:`~layerlmc.evaluate.EVALUATORS`;
    docs/evaluators.md): ``plain``, ``incremental``, ``vmap`` or ``auto``; all give the same
    numbers. ``precision`` (``fp32``, ``bf16``, ``fp16``) is the autocast dtype of every
    forward pass (``fp32``: none); it changes the numbers.
    """
    check_policy(bn)
    check_evaluator(evaluator)
    check_precision(precision)
    target = resolve_device(device)
    prepared = prepare_splits(data, as_list(splits) or None, max_examples, seed, target)
    batches: list[torch.Tensor] = []
    size = bn_batch_size or batch_size
    if bn == "recompute" and batchnorm_modules(model):
        batches = statistics_batches(data, bn_split, bn_batches, size, seed, target)
    source = f"split '{bn_split}' (seed {seed})"
    spec = EvaluatorSpec(evaluator, model.to(target), prepared, batch_size, bn, batches, source,
                         precision)
    chosen = spec.build()
    chosen.spec = spec  # how a worker of a distributed executor builds the same evaluator
    chosen.check({k: v.to(target) for k, v in state.items()})
    return chosen


def analysis_inputs(
    model: torch.nn.Module, data: Mapping[str, object], max_examples: int | None, seed: int,
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
        "example subset": f"{max_examples} examples, seed {seed}" if max_examples else "all examples",
        "grouping": f"{groups} {list(patterns)}" if patterns else groups,
        "BatchNorm policy": batchnorm,
        "precision": precision,
    }


def barriers(
    model: torch.nn.Module,
    a: StateDict | str | FilePath,
    b: StateDict | str | FilePath,
    data: Mapping[str, object],
    *,
    groups: str = "module",
    patterns: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    layerwise: bool = True,
    bases: Sequence[str] = ("a", "b"),
    cumulative: Sequence[str] = (),
    alphas: str | Sequence[float] = "0:1:11",
    layer_alphas: str | Sequence[float] | None = None,
    definitions: Sequence[str] = ("midpoint",),
    references: Sequence[str] = ("models",),
    splits: Sequence[str] | None = None,
    max_examples: int | None = None,
    batch_size: int = 1024,
    device: str = "auto",
    seed: int = 0,
    extrapolate: bool = False,
    bn: str = "interpolate",
    bn_batches: int = 10,
    bn_batch_size: int | None = None,
    bn_split: str = "train",
    evaluator: str = "plain",
    precision: str = "fp32",
    out: str | FilePath | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> pd.DataFrame:
    """Full-network, layer-wise and cumulative barriers between endpoints ``a`` and ``b``.

    ``a`` and ``b`` are state dicts or checkpoint paths; ``data`` maps split names to
    ``(inputs, labels)`` tensors or torch Datasets. Returns one row per barrier with the
    columns of ``barriers.csv`` (DESIGN.md §4): ``value`` is the barrier of ``metric``
    (``loss`` = mean cross-entropy per example, ``error`` = 1 − accuracy) under
    ``definition`` (``midpoint``/``max``) and ``reference`` (``models``/``path``).

    ``bn`` says what the running statistics of BatchNorm layers are at each evaluated state
    (docs/batchnorm.md): ``interpolate`` (blended with the weights), ``recompute`` (estimated
    afresh from ``bn_batches`` batches of ``bn_batch_size`` examples of split ``bn_split``),
    ``batch-stats`` (each evaluation batch's own) or ``keep-base`` (the path's base's; ``a``'s
    on the full path). The policy applies to the endpoints too.

    With ``out``, the run folder gets ``config.yaml``, ``run.json``, ``points.jsonl``,
    ``barriers.csv`` and ``figures/``; calling again with the same ``out`` evaluates only
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
    paths = plan_paths(
        state_a, model, groups=groups, patterns=patterns, layers=layers, layerwise=layerwise,
        bases=bases, cumulative=cumulative, alphas=alphas, layer_alphas=layer_alphas,
        definitions=definitions, references=references, seed=seed, extrapolate=extrapolate,
    )
    chosen = build_evaluator(model, data, state_a, splits, max_examples, seed, batch_size, device,
                             bn=bn, bn_batches=bn_batches, bn_batch_size=bn_batch_size,
                             bn_split=bn_split, evaluator=evaluator, precision=precision)
    run = None
    if out is not None:
        run = RunDir(out)
        inputs = {"checkpoint a": state_digest(state_a), "checkpoint b": state_digest(state_b),
                  **analysis_inputs(model, data, max_examples, seed, groups, patterns,
                                    chosen.bn_summary, chosen.precision)}
        settings = dict(config) if config is not None else {
            "groups": groups, "patterns": list(patterns), "layers": list(layers or []),
            "layerwise": layerwise, "bases": list(bases), "cumulative": list(cumulative),
            "alphas": str(alphas), "layer_alphas": None if layer_alphas is None else str(layer_alphas),
            "definitions": list(definitions), "references": list(references),
            "splits": list(splits or []), "max_examples": max_examples, "batch_size": batch_size,
            "device": device, "seed": seed, "extrapolate": extrapolate, "bn": bn,
            "bn_batches": bn_batches, "bn_batch_size": bn_batch_size, "bn_split": bn_split,
            "evaluator": evaluator, "precision": precision,
        }
        run.claim(inputs, settings, str(chosen.device))
    with run.status_on_error() if run is not None else contextlib.nullcontext():
        records = evaluate_paths(chosen, state_a, state_b, paths, run=run, progress=progress)
    table = compute_barriers(pd.DataFrame(records), definitions, references)
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
