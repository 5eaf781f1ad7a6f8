"""Points to records: every point of every path evaluated once per split, and appended.

:func:`evaluate_paths` is the loop every analysis shares (the local executor's; the cells of a
distributed one run it piece by piece, :mod:`layerlmc.analyses.cells`). It turns the paths of a
plan (:func:`layerlmc.core.plan.plan_paths`) into the records that
:func:`layerlmc.core.barriers.compute_barriers` reads.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..core.checkpoints import StateDict
from ..core.paths import LazyState, Path, Point, Scratch, interpolate, interpolated_keys
from ..core.records import SCHEMA, RunDir, point_key
from .plain import Evaluator, Job, Metrics

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
                record = point_record(point, split, step, unit)
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
    with tqdm(total=len(todo), desc="evaluating", unit="point", disable=bar_disabled(progress, fresh_states)) as bar:
        if evaluator.kind != "plain":
            _evaluate_batched(evaluator, a, b, todo, known, float_keys, same, records, run, bar,
                              step, unit)
            return records
        # one state alive at a time: every point is built into the same scratch memory
        # (sized for the largest state still to evaluate: stored ones need none)
        scratch = Scratch(a, (interpolated_keys(state_point, a) for _, state_point, weights, missing
                              in todo if any((weights, s) not in known for s in missing)))
        for point, state_point, weights, missing in todo:
            state = None
            new = []
            for split in missing:
                metrics = known.get((weights, split))
                if metrics is None:
                    if state is None:
                        scratch.reset()
                        state = evaluator.prepare(interpolate(a, b, state_point, scratch))
                    metrics = evaluator.evaluate(state, split)
                    known[(weights, split)] = metrics
                new.append(point_record(point, split, step, unit, metrics))
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
    the bytes of one state (at least one point), so memory stays bounded whatever the path;
    lazy states (below) hold no tensors, so only the count bounds their chunks.
    An evaluator that :attr:`~Evaluator.reads_lazily` gets :class:`LazyState` mappings, which
    hold no interpolated tensor between its reads: then the sweep holds ``a``, ``b`` and what
    the evaluator computes, and no scratch state."""
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
    lazy = evaluator.reads_lazily
    chunks: list[list[tuple]] = []
    used = 0
    for weights, state_point, base, changed, size in entries:
        current = chunks[-1] if chunks else None
        # lazy states hold no tensor, so their bytes bound nothing: a base's points then share
        # one chunk, and the base's values are computed once per batch instead of once a chunk
        if (current is None or current[0][2] != base or len(current) >= CHUNK_POINTS
                or (not lazy and used + size > budget)):
            chunks.append([])
            used = 0
        chunks[-1].append((weights, state_point, base, changed))
        used += size
    # the states of one chunk are alive together; the next chunk reuses their memory
    scratch = Scratch(a, [] if lazy else ([key for _, state_point, _, _ in chunk
                                           for key in interpolated_keys(state_point, a)]
                                          for chunk in chunks))
    emitted = 0
    for chunk in chunks:
        scratch.reset()
        jobs = [Job(LazyState(a, b, state_point) if lazy else interpolate(a, b, state_point, scratch),
                    bases[base], changed)
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
        new = [point_record(point, split, step, unit, known[(weights, split)]) for split in missing]
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


def bar_disabled(progress: bool | None, work: int) -> bool | None:
    """tqdm's ``disable`` for a bar over ``work`` items: ``progress`` None shows it on a terminal
    only, and not for a couple of items."""
    if progress is None:
        return None if work > 2 else True  # tqdm's None: shown on a terminal only
    return not progress


def point_record(point: Point, split: str, step, unit, metrics: Metrics | None = None) -> dict:
    path = point.path
    record = {
        "schema": SCHEMA, "step": step, "unit": unit, "kind": path.kind, "group": path.group,
        "group_index": path.group_index, "base": path.base, "order": path.order,
        "alpha": point.alpha, "direction": None, "sigma": None, "sample": None, "split": split,
    }
    if metrics is not None:
        record.update(loss=metrics.loss, accuracy=metrics.accuracy, n=metrics.n)
    return record
