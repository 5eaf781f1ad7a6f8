"""An analysis split into independent cells (step × path) for a distributed executor.

The local executor evaluates a step's points in one loop (:func:`layerlmc.evaluate.points.evaluate_paths`),
where identical states are shared across paths. On a cluster the same points are cut into
cells: per step (one pair is one step of null ``step``), one cell for the two endpoints, then
one per path (or per random-direction family, or per subspace target, direction and σ), each
given the endpoints' records. The evaluator's specification is shared once per
analysis and each step's endpoint weights once per step; a cell carries only handles to them.

The driver is the only writer: it appends a finished cell's new records to ``points.jsonl``
in one fsynced write, skips cells whose records are all stored (a rerun after a kill), and
never appends a point key twice. Numbers equal the local executor's: a state evaluated in
another cell is the same state, evaluated by the same evaluator.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from tqdm.auto import tqdm

from ..core.checkpoints import StateDict
from ..core.paths import Path
from ..core.records import RunDir, point_key
from ..evaluate import Evaluator, EvaluatorSpec
from ..evaluate.points import bar_disabled, endpoint_paths, evaluate_paths, point_record
from .executors import Executor, Shared


class CellWork(Protocol):
    """What a cell computes at one step: records of its points, given the evaluator, the
    endpoints and the records already known (the endpoints', and any of its own)."""

    def keys(self, splits: Sequence[str], step: int | None, unit: str | None) -> list[tuple]:
        """The point keys of the records it returns, computed without evaluating anything."""
        ...

    def __call__(self, evaluator: Evaluator, a: StateDict, b: StateDict, step: int | None,
                 unit: str | None, stored: Sequence[Mapping]) -> list[dict]:
        ...


@dataclasses.dataclass(frozen=True)
class PathWork:
    """The points of some paths (none: only the two endpoints)."""

    paths: tuple[Path, ...] = ()

    def keys(self, splits, step, unit):
        paths = self.paths or tuple(endpoint_paths())
        return [point_key(point_record(point, split, step, unit))
                for path in paths for point in path.points() for split in splits]

    def __call__(self, evaluator, a, b, step, unit, stored):
        return evaluate_paths(evaluator, a, b, list(self.paths), step=step, unit=unit,
                              progress=False, stored=stored)


@dataclasses.dataclass
class Cell:
    """A task: ``work`` at ``step``, on the shared evaluator and endpoints."""

    evaluator: Shared[EvaluatorSpec]
    a: Shared[StateDict]
    b: Shared[StateDict]
    step: int | None
    unit: str | None
    work: CellWork
    stored: list[dict]
    device: str = "cpu"  # where the worker evaluates (the spec travels on the CPU)


def evaluate_cell(cell: Cell) -> list[dict]:
    """Runs on a worker: the cell's records (the evaluator is built once per worker)."""
    a = cell.a.get()
    evaluator = _evaluator(cell.evaluator, cell.device, a)
    return cell.work(evaluator, a, cell.b.get(), cell.step, cell.unit, cell.stored)


def _evaluator(spec: Shared[EvaluatorSpec], device: str, state: StateDict) -> Evaluator:
    def build() -> Evaluator:
        evaluator = spec.get().to(device).build()
        # as the driver's: an incremental evaluator checks its traced graph against the model
        # (and falls back to plain where they differ), and labels are checked once
        evaluator.check({k: v.to(evaluator.device) for k, v in state.items()})
        return evaluator

    key = getattr(spec, "key", None)
    if key is None:  # this process: build it once per handle
        if not hasattr(spec, "_built"):
            spec._built = build()
        return spec._built
    from .executors import worker_cached

    return worker_cached(f"{key}:evaluator:{device}", build)


def evaluate_cells(
    executor: Executor,
    evaluator: Evaluator,
    steps: Iterable[tuple[int | None, StateDict, StateDict]],
    works: Callable[[int | None], Sequence[CellWork]],
    *,
    run: RunDir | None,
    unit: str | None,
    progress: bool | None = None,
) -> list[dict]:
    """Every record of the endpoints and of ``works(step)`` at every step, evaluated as cells
    on ``executor``; returned step by step, the endpoints' records first, then the cells' in
    the order ``works`` lists them.

    ``steps`` yields ``(step, a, b)`` and is consumed a block of steps at a time (the
    endpoint weights of one block are in the object store together), so a caller may load
    and check each step's checkpoints as it is drawn.
    """
    splits = list(evaluator.splits)
    stored = {point_key(r): r for r in run.read_points()} if run is not None else {}
    spec = executor.share(evaluator.spec.to("cpu"))
    device = str(evaluator.device)
    window = getattr(executor, "window", 1)
    drawn = iter(steps)
    block_size = 1
    ordered: list[dict] = []
    bar = tqdm(total=0, desc="cells", unit="cell", disable=bar_disabled(progress, 3))

    def finished(results: Iterator[tuple[int, list[dict]]]) -> None:
        for _, records in results:
            fresh = {}
            for record in records:
                key = point_key(record)
                if key not in stored and key not in fresh:
                    fresh[key] = record
            if run is not None and fresh:
                run.append_points(fresh.values())  # one fsynced write per cell
            stored.update(fresh)
            bar.update()

    with bar:
        while True:
            block = list(itertools.islice(drawn, block_size))
            if not block:
                break
            shared, endpoint_cells, planned = {}, [], []
            for step, a, b in block:
                ends = PathWork().keys(splits, step, unit)
                cells = [(work, work.keys(splits, step, unit)) for work in works(step)]
                missing = [(work, keys) for work, keys in cells if not all(k in stored for k in keys)]
                ends_missing = not all(k in stored for k in ends)
                if ends_missing or missing:  # a step whose records are all stored ships nothing
                    shared[step] = (executor.share(_cpu(a)), executor.share(_cpu(b)))
                if ends_missing:
                    endpoint_cells.append(Cell(spec, *shared[step], step, unit, PathWork(), [], device))
                planned.append((step, ends, cells, missing))
            bar.total += len(endpoint_cells)
            finished(executor.map_unordered(evaluate_cell, endpoint_cells))
            later = []
            for step, ends, _, missing in planned:
                end_records = [stored[k] for k in ends]
                for work, keys in missing:
                    known = [stored[k] for k in keys if k in stored]
                    later.append(Cell(spec, *shared[step], step, unit, work, end_records + known, device))
            bar.total += len(later)
            finished(executor.map_unordered(evaluate_cell, later))
            for step, ends, cells, _ in planned:
                ordered += [stored[k] for k in ends]
                ordered += [stored[k] for _, keys in cells for k in keys]
            del shared  # the block's endpoints leave the object store
            # enough steps per block to give every worker a cell, after the first one
            block_size = max(1, math.ceil(window / (1 + len(planned[0][2]))))
    return ordered


def evaluate_steps(
    executor: Executor,
    evaluator: Evaluator,
    steps: Iterable[tuple[int | None, StateDict, StateDict]],
    paths: Sequence[Path],
    *,
    run: RunDir | None,
    unit: str | None,
    progress: bool | None = None,
) -> list[dict]:
    """Every record of the endpoints and of ``paths`` at every ``(step, a, b)`` of ``steps``
    (one pair is one step of null ``step``): on the executor named ``local`` in one
    :func:`~layerlmc.evaluate.points.evaluate_paths` loop per step, where identical states are
    shared across paths; on any other as cells, one per path."""
    if executor.name == "local":
        records: list[dict] = []
        for step, a, b in steps:
            records += evaluate_paths(evaluator, a, b, paths, run=run, step=step, unit=unit,
                                      progress=progress)
        return records
    cells = [PathWork((path,)) for path in paths]
    return evaluate_cells(executor, evaluator, steps, lambda step: cells, run=run, unit=unit,
                          progress=progress)


def _cpu(state: StateDict) -> StateDict:
    return {k: v.detach().cpu() for k, v in state.items()}
