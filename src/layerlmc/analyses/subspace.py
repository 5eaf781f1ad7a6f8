"""Subspace and null-space noise (the paper's Sec. 5.2; PAPER.md §4.2): how the loss of each of
two trained networks θ_a, θ_b changes when it is moved by σ·v along unit directions v drawn in

- ``span``: the span of the two networks' final parameter vectors. This is what the published
  plots show: the notebooks' per-epoch snapshots aliased the live weights, so their "training
  subspace" was span{θ_a, θ_b};
- ``trajectory``: the span of their saved per-epoch checkpoints (and θ_a, θ_b), the intended
  training-trajectory subspace;
- ``nullspace``: the orthogonal complement of that span;
- ``average``: the averaging direction d̂ = (θ_a − θ_b)/‖θ_a − θ_b‖, network a moved to θ_a + σ·d̂
  and network b to θ_b − σ·d̂, each away from the other as in the notebooks.

For the full network and, per layer group, with the direction living in that group's
coordinates (zeros elsewhere). Only trainable parameters move; buffers (e.g. batch-norm
statistics) stay those of the perturbed network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.checkpoints import StateDict, check_pair, load_state_dict, reorder_like, state_digest
from ..core.groups import layer_groups, select_groups, tied_keys
from ..core.options import flat_options
from ..core.plan import as_list
from ..core.records import SCHEMA, RunDir, point_key
from ..errors import LayerLMCError, unknown
from ..evaluate import Evaluator, Metrics
from ..evaluate.options import EvalOptions, analysis_inputs, build_evaluator
from .cells import evaluate_cells
from .executors import Executor, Shared, using_executor

log = logging.getLogger("layerlmc")

SPANS = ("final", "trajectory")
#: Direction choices; ``span`` is recorded as ``span`` or ``trajectory`` after the span used.
DIRECTIONS = ("span", "nullspace", "average")
COEFFICIENTS = ("uniform", "gaussian")
SPACINGS = ("grid", "uniform")
CSV_COLUMNS = ("direction", "network", "group", "sigma", "sample", "split", "loss", "accuracy")
DEFAULT_MAX_MEMORY = 2 * 1024**3
BASES = ("a", "b")
Source = Mapping[str, torch.Tensor] | str | Path


# -- σ values -----------------------------------------------------------------------------------
def parse_sigmas(
    spec: str | float | Sequence[float], spacing: str = "grid", seed: int = 0,
) -> tuple[float, ...]:
    """σ values from ``MIN:MAX:N`` (N values: an evenly spaced grid, or with ``spacing="uniform"``
    N seeded draws from Uniform[MIN, MAX], sorted, as the notebooks drew them), a comma list
    ``0.1,1,5`` or a sequence of numbers. Values are rounded to 12 significant digits, so that
    they read back from ``points.jsonl`` as the same keys."""
    if spacing not in SPACINGS:
        raise unknown("σ spacing", spacing, SPACINGS)
    if isinstance(spec, (int, float)):
        values = [float(spec)]
    elif isinstance(spec, str) and ":" in spec:
        parts = spec.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise LayerLMCError(
                f"σ range '{spec}' is not of the form MIN:MAX:N (e.g. 0.001:10:100)"
            ) from None
        if low > high:
            raise LayerLMCError(f"σ range '{spec}': MIN {low:g} is larger than MAX {high:g}")
        if count < 1:
            raise LayerLMCError(f"σ range '{spec}': N must be at least 1, got {count}")
        if spacing == "grid":
            values = torch.linspace(low, high, count, dtype=torch.float64).tolist()
        else:
            generator = torch.Generator().manual_seed(seed)
            draws = torch.rand(count, generator=generator, dtype=torch.float64)
            values = sorted((low + (high - low) * draws).tolist())
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            values = [float(v) for v in items if str(v).strip()]
        except (TypeError, ValueError):
            raise LayerLMCError(
                f"σ values '{spec}' are not numbers; give MIN:MAX:N or a list 0.1,1,5"
            ) from None
    if not values:
        raise LayerLMCError(f"no σ values in '{spec}'")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise LayerLMCError(f"σ must be finite and non-negative, got {bad[0]:g}")
    return tuple(dict.fromkeys(float(f"{v:.12g}") for v in values))


# -- bases and directions -----------------------------------------------------------------------
def check_memory(rows: int, columns: int, limit: int, what: str) -> None:
    """Refuse a snapshot matrix of ``rows × columns`` float32 values larger than ``limit`` bytes."""
    size = rows * columns * 4
    if size > limit:
        raise LayerLMCError(
            f"the snapshot matrix of {what} would take {_bytes(size)} ({rows:,} parameters × "
            f"{columns} snapshots × 4 bytes), over the limit of {_bytes(limit)} (--max-memory); "
            "analyse layer groups only (--per-layer --no-full), use fewer checkpoints (--every N) "
            "or --span final"
        )


def orthonormal_basis(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``S`` [d, k] of the column span of ``matrix`` [d, m], k = its
    numerical rank, like ``scipy.linalg.orth``: thin QR, then the SVD of the small R factor,
    keeping singular values above max(d, m)·ε·s_max, so repeated or dependent snapshots add no
    spurious directions. Columns are ordered by singular value.

    Signs: each column has a non-positive inner product with the sum of the snapshots (it
    points from the weights towards the origin). An SVD leaves the signs free, and with
    ``uniform`` coefficients they decide which orthant the span directions come from; LAPACK
    (numpy, scipy, torch) returned this orientation for the leading vector of the notebooks'
    setting here, and it reproduces their observation that span noise keeps or lowers the loss.
    """
    rows, columns = matrix.shape
    if columns == 0 or rows == 0:
        return matrix.new_zeros(rows, 0, dtype=torch.float32)
    matrix = matrix.float()
    q, r = torch.linalg.qr(matrix, mode="reduced")
    u, s, _ = torch.linalg.svd(r.double())
    tolerance = max(rows, columns) * torch.finfo(torch.float32).eps * float(s.max())
    keep = s > tolerance
    if not bool(keep.any()):
        return matrix.new_zeros(rows, 0)
    basis = q @ u[:, keep].to(q.dtype)
    del q
    lean = basis.T @ matrix.sum(dim=1)
    return basis * torch.where(lean > 0, -1.0, 1.0).to(basis.dtype)


def span_direction(
    basis: torch.Tensor, generator: torch.Generator, coefficients: str = "uniform",
) -> torch.Tensor:
    """A unit vector S·c/‖S·c‖ in the span of ``basis`` S [d, k]: c ~ Uniform[0, 1)^k as the
    notebooks drew it (directions in one orthant of the basis), or c ~ N(0, I_k) (uniform on
    the sphere of the span)."""
    if coefficients not in COEFFICIENTS:
        raise unknown("coefficient distribution", coefficients, COEFFICIENTS)
    k = basis.shape[1]
    draw = torch.rand if coefficients == "uniform" else torch.randn
    c = draw(k, generator=generator, dtype=torch.float32).to(basis.device)
    v = basis @ c
    return v / torch.linalg.vector_norm(v)


def nullspace_direction(basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A unit vector uniformly distributed on the sphere of the orthogonal complement of the
    span of ``basis`` S [d, k], without a d×d basis: g ~ N(0, I_d), g − S(Sᵀg), normalised. The
    projection is applied twice, so the result is orthogonal to the span to float precision."""
    g = torch.randn(basis.shape[0], generator=generator, dtype=torch.float32).to(basis.device)
    for _ in range(2):
        g = g - basis @ (basis.T @ g)
    return g / torch.linalg.vector_norm(g)


def averaging_direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d̂ = (a − b)/‖a − b‖; network a moves along +d̂, network b along −d̂."""
    difference = a.float() - b.float()
    norm = torch.linalg.vector_norm(difference)
    if norm == 0:
        raise LayerLMCError("the two networks are identical: there is no averaging direction")
    return difference / norm


def direction_generator(
    seed: int, direction: str, group: str, sigma: float, sample: int,
) -> torch.Generator:
    """The generator of one random direction: a pure function of the seed and the point, so a
    resumed run draws exactly the directions an uninterrupted one would."""
    text = f"{seed}|{direction}|{group}|{sigma!r}|{sample}"
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)
    return torch.Generator().manual_seed(value)


# -- the analysis -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The full network or one layer group: its parameter keys and their rows in the flat
    parameter vector."""

    name: str
    index: int | None
    keys: tuple[str, ...]
    rows: torch.Tensor  # int64 indices into the full flat vector

    @property
    def size(self) -> int:
        return int(self.rows.numel())


@flat_options
def subspace(
    model: torch.nn.Module,
    a: Source,
    b: Source,
    data: Mapping[str, object],
    out: str | Path | None = None,
    *,
    span: str = "final",
    snapshots: Sequence[Source] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    sigmas: str | Sequence[float] = "0.001:10:100",
    layer_sigmas: str | Sequence[float] | None = None,
    spacing: str = "grid",
    samples: int = 1,
    full: bool = True,
    per_layer: bool = False,
    groups: str = "module",
    patterns: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    coefficients: str = "uniform",
    renormalise: bool = False,
    evaluation: EvalOptions = EvalOptions(),
    max_memory: int = DEFAULT_MAX_MEMORY,
    step: int | None = None,
    unit: str | None = None,
    executor: str | Executor = "local",
    address: str | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> pd.DataFrame:
    """Loss and accuracy of networks ``a`` and ``b`` moved by σ·v, v a unit direction of each
    ``directions`` type; returns the tidy table of ``subspace.csv`` (columns ``CSV_COLUMNS``;
    ``direction`` is ``span``/``trajectory``/``nullspace``/``average``, or ``clean`` for the
    unperturbed networks at σ = 0).

    - ``span="final"`` uses span{θ_a, θ_b} (the published plots); ``"trajectory"`` the span of
      ``snapshots`` (state dicts or checkpoint paths of both runs, e.g. every epoch) and θ_a, θ_b.
    - ``sigmas`` (full network) and ``layer_sigmas`` (per group; default ``sigmas``): see
      :func:`parse_sigmas`. Each (σ, sample) gets a fresh direction, shared by both networks
      and a pure function of ``seed``; ``average`` is deterministic (``sample`` null).
    - ``per_layer``: each layer group of ``groups``/``patterns`` (or only ``layers``) too; the
      averaging direction is the full d̂ with the other groups zeroed, not renormalised (norm
      ‖Δ_l‖/‖Δ‖ as in the notebooks) unless ``renormalise``.
    - ``splits``: default ``test`` when the data has it, else every split.
    - ``precision``: the autocast dtype of the forward passes (``fp32``: none, ``bf16``,
      ``fp16``); it changes the numbers, so a folder computed in one is refused in another.
    - ``max_memory``: bytes allowed for the d×m float32 snapshot matrix (the QR needs about
      twice that at its peak).
    - ``executor``: ``local``, ``ray`` with the cluster's ``address``, or an
      :class:`~layerlmc.analyses.executors.Executor`. Other than ``local``, the clean networks
      and then each (group, direction, σ) with all its samples run as cells, the span bases
      computed here once and shared; the records are the same, and only this process writes.

    With ``out``, the run folder gets ``config.yaml``, ``run.json``, ``points.jsonl`` (schema 2,
    ``kind=direction``) and ``subspace.csv`` (:func:`layerlmc.subspace` also draws
    ``figures/subspace_<full|group>.png``); a rerun evaluates only points that are not stored yet.
    """
    if span not in SPANS:
        raise unknown("span", span, SPANS)
    directions = as_list(directions)
    for name in directions:
        if name not in DIRECTIONS:
            raise unknown("direction", name, DIRECTIONS)
    if not directions:
        raise LayerLMCError("no directions chosen; give some of span, nullspace, average")
    if coefficients not in COEFFICIENTS:
        raise unknown("coefficient distribution", coefficients, COEFFICIENTS)
    if samples < 1:
        raise LayerLMCError(f"--samples must be at least 1, got {samples}")
    if not (full or per_layer):
        raise LayerLMCError("nothing to analyse: keep the full network or add --per-layer")
    if max_memory <= 0:
        raise LayerLMCError(f"--max-memory must be positive, got {max_memory}")
    if span == "trajectory" and not snapshots:
        raise LayerLMCError("span 'trajectory' needs the snapshots (checkpoints) of both runs")
    if span == "final" and snapshots:
        raise LayerLMCError("snapshots are only used with span 'trajectory'")
    if (evaluation.bn, evaluation.evaluator) != ("interpolate", "plain"):
        raise LayerLMCError("subspace evaluates with the plain evaluator and interpolated "
                            "BatchNorm statistics; leave bn and evaluator at their defaults")
    seed = evaluation.seed
    full_sigmas = parse_sigmas(sigmas, spacing, seed)
    group_sigmas = (full_sigmas if layer_sigmas is None
                    else parse_sigmas(layer_sigmas, spacing, seed + 1))

    expected = model.state_dict()
    state_a = _load(a, expected)
    state_b = _load(b, expected)
    check_pair(state_a, state_b, expected)
    if evaluation.splits is None:
        evaluation = dataclasses.replace(evaluation, splits=["test"] if "test" in data else None)
    evaluator = build_evaluator(model, data, state_a, evaluation=evaluation)
    target_device = evaluator.device
    state_a = {k: v.to(target_device) for k, v in state_a.items()}
    state_b = {k: v.to(target_device) for k, v in state_b.items()}

    parameter_keys = [k for k, _ in model.named_parameters() if state_a[k].is_floating_point()]
    offsets, start = {}, 0
    for key in parameter_keys:
        offsets[key] = (start, start + state_a[key].numel())
        start += state_a[key].numel()
    targets = _targets(model, state_a, parameter_keys, offsets, full, per_layer, groups, patterns,
                       layers)
    sources: list[Source] = [state_a, state_b, *(snapshots or [])]
    for target in targets:
        check_memory(target.size, len(sources), max_memory, _what(target))

    recorded = {"span": "span" if span == "final" else "trajectory", "nullspace": "nullspace",
                "average": "average"}
    plan = _plan(targets, directions, recorded, full_sigmas, group_sigmas, samples,
                 list(evaluator.splits))

    # the cluster is reached (or refused) before the output folder is claimed
    with using_executor(executor, address, device=target_device) as runner:
        run = None
        if out is not None:
            run = RunDir(out)
            inputs = {
                "checkpoint a": state_digest(state_a), "checkpoint b": state_digest(state_b),
                **analysis_inputs(model, data, evaluation, groups, patterns,
                                  precision=evaluator.precision),
                "span": "final" if span == "final"
                        else f"trajectory of {len(sources)} snapshots {_sources_digest(snapshots)}",
                "directions": f"seed {seed}, {coefficients} coefficients, average "
                              + ("renormalised per group" if renormalise else "not renormalised"),
            }
            settings = dict(config) if config is not None else {
                "span": span, "directions": directions, "sigmas": _text(sigmas),
                "layer_sigmas": None if layer_sigmas is None else _text(layer_sigmas),
                "spacing": spacing, "samples": samples, "full": full, "per_layer": per_layer,
                "groups": groups, "patterns": list(patterns), "layers": list(layers or []),
                "coefficients": coefficients, "renormalise": renormalise,
                "splits": list(evaluator.splits), "max_examples": evaluation.max_examples,
                "batch_size": evaluation.batch_size, "device": evaluation.device, "seed": seed,
                "precision": evaluation.precision, "loss_mean": evaluation.loss_mean,
                "max_memory": max_memory,
                "step": step, "unit": unit, "snapshots": len(snapshots or []),
            }
            run.claim(inputs, settings, str(target_device))
        with run.status_on_error() if run is not None else contextlib.nullcontext():
            evaluate = (_evaluate if runner.name == "local"
                        else functools.partial(_evaluate_cells, runner))
            records = evaluate(
                evaluator, state_a, state_b, targets, plan, sources, parameter_keys, run=run,
                step=step, unit=unit, seed=seed, coefficients=coefficients, renormalise=renormalise,
                max_memory=max_memory, progress=progress,
            )
        table = tidy(records)
        if run is not None:
            run.write_file("subspace.csv", table.to_csv(index=False))
            run.finish("complete")
        return table


def _load(source: Source, expected: Mapping[str, torch.Tensor]) -> StateDict:
    state = load_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    return reorder_like(state, expected)


def _targets(
    model, state, parameter_keys, offsets, full, per_layer, groups, patterns, layers,
) -> list[Target]:
    def rows(keys):
        parts = [torch.arange(*offsets[k]) for k in keys]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    targets = []
    if full:
        targets.append(Target("full", None, tuple(parameter_keys), rows(parameter_keys)))
    if per_layer:
        movable = set(parameter_keys)
        chosen = select_groups(layer_groups(state, groups, patterns, tied=tied_keys(model)), layers)
        for group in chosen:
            keys = tuple(k for k in group.keys if k in movable)
            if keys:
                targets.append(Target(group.name, group.index, keys, rows(keys)))
            elif layers:
                log.info("layer group %s has no trainable parameters; skipped", group.name)
    return targets


def _plan(targets, directions, recorded, full_sigmas, group_sigmas, samples, splits) -> list[dict]:
    """Every record the analysis needs, without metrics: the clean networks, then per target,
    direction, σ and sample both networks on every split."""
    plan = [_record("endpoint", None, "full", None, base, None, None, split, alpha=float(i))
            for i, base in enumerate(BASES) for split in splits]
    for target in targets:
        sigma_values = full_sigmas if target.index is None else group_sigmas
        for direction in directions:
            draws = [None] if direction == "average" else range(samples)
            for sigma in sigma_values:
                for sample in draws:
                    for base in BASES:
                        for split in splits:
                            plan.append(_record("direction", recorded[direction], target.name,
                                                target.index, base, sigma, sample, split))
    return plan


def _record(kind, direction, group, group_index, base, sigma, sample, split, *,
            alpha=None) -> dict:
    return {
        "schema": SCHEMA, "step": None, "unit": None, "kind": kind, "group": group,
        "group_index": group_index, "base": base, "order": None, "alpha": alpha,
        "direction": direction, "sigma": sigma, "sample": sample, "split": split,
    }


def _evaluate(
    evaluator: Evaluator, state_a: StateDict, state_b: StateDict, targets: Sequence[Target],
    plan: list[dict],
    sources: Sequence[Source], parameter_keys, *, run: RunDir | None, step, unit, seed: int,
    coefficients: str, renormalise: bool, max_memory: int, progress: bool | None,
) -> list[dict]:
    for record in plan:
        record.update(step=step, unit=unit)
    stored = {point_key(r): r for r in run.read_points()} if run is not None else {}
    records = [stored[point_key(r)] for r in plan if point_key(r) in stored]
    missing = [r for r in plan if point_key(r) not in stored]
    if not missing:
        if stored:
            log.info("all points already stored in %s; nothing to evaluate", run.points_file)
        return records
    log.info("evaluating %d points (%s examples)%s", len(missing),
             ", ".join(f"{name} {len(split):,}" for name, split in evaluator.splits.items()),
             f"; {len(records)} already stored" if records else "")
    states = dict(zip(BASES, (state_a, state_b)))
    bar = tqdm(total=len(missing), desc="evaluating", unit="point",
               disable=(None if len(missing) > 20 else True) if progress is None else not progress)

    def finish(new: list[dict]) -> None:
        records.extend(new)
        if run is not None:
            run.append_points(new)
        bar.update(len(new))

    with bar:
        finish([{**r, **_metrics(evaluator.evaluate(states[r["base"]], r["split"]))}
                for r in missing if r["kind"] == "endpoint"])
        by_target = _by_target(missing)
        difference = _flatten(state_a, parameter_keys) - _flatten(state_b, parameter_keys)
        skip = _warn_once()
        basis_of = _span_bases(sources, parameter_keys, difference.numel(), max_memory,
                               evaluator.device)
        for target in targets:
            todo = by_target.get((target.name, target.index))
            if not todo:
                continue
            basis = basis_of(target) if any(r["direction"] != "average" for r in todo) else None
            draws: dict[tuple, list[dict]] = {}
            for r in todo:
                draws.setdefault((r["direction"], r["sigma"], r["sample"]), []).append(r)
            for (direction, sigma, sample), points in draws.items():
                new = _draw_records(evaluator, states, target, basis, difference, direction,
                                    sigma, sample, points, seed, coefficients, renormalise, skip)
                if new is None:
                    bar.update(len(points))
                    continue
                finish(new)
    return records


def _evaluate_cells(
    executor: Executor, evaluator: Evaluator, state_a: StateDict, state_b: StateDict,
    targets: Sequence[Target], plan: list[dict], sources: Sequence[Source], parameter_keys, *,
    run: RunDir | None, step, unit, seed: int, coefficients: str, renormalise: bool,
    max_memory: int, progress: bool | None,
) -> list[dict]:
    """:func:`_evaluate` as cells on ``executor``: the clean networks, then one cell per
    target, direction and σ (every sample, both networks). The span bases are computed here,
    as the local loop computes them, and shared once with θ_a − θ_b and the targets; a target
    without a direction of some type (an empty null space) gets no cells for it."""
    for record in plan:
        record.update(step=step, unit=unit)
    stored = {point_key(r) for r in run.read_points()} if run is not None else set()
    by_target = _by_target(plan)
    difference = _flatten(state_a, parameter_keys) - _flatten(state_b, parameter_keys)
    skip = _warn_once()
    basis_of = _span_bases(sources, parameter_keys, difference.numel(), max_memory,
                           evaluator.device)
    chosen, bases, cells = {}, {}, []
    for target in targets:
        name = (target.name, target.index)
        planned = by_target.get(name)
        if not planned:
            continue
        missing = [r for r in planned if point_key(r) not in stored]
        basis = None
        if any(r["direction"] != "average" for r in missing):
            basis = basis_of(target)
            bases[name] = basis.cpu()
        draws: dict[tuple, dict] = {}
        for r in planned:
            draws.setdefault((r["direction"], r["sigma"]), {})[r["sample"]] = None
        exists: dict[str, bool] = {}
        for (direction, sigma), samples in draws.items():
            if direction not in exists:
                # whether the target has a direction of this type depends on neither σ nor the
                # sample: one draw tells, with the local loop's warning (the basis is left out
                # only where every point that needs it is stored)
                exists[direction] = (basis is None and direction != "average") or _vectors(
                    direction, target, basis, difference, seed, sigma, next(iter(samples)),
                    coefficients, renormalise, skip) is not None
            if exists[direction]:
                cells.append((name, direction, sigma, tuple(samples)))
        if missing:
            chosen[name] = target
    context = Shared({})
    if chosen:  # the targets' rows and bases travel once, not with every cell
        context = executor.share({"targets": chosen, "difference": difference.cpu(),
                                  "bases": bases})
    works = [DrawWork(context, name, direction, sigma, samples, seed, coefficients, renormalise)
             for name, direction, sigma, samples in cells]
    return evaluate_cells(executor, evaluator, [(step, state_a, state_b)], lambda _: works,
                          run=run, unit=unit, progress=progress)


@dataclass(frozen=True)
class DrawWork:
    """A cell of a distributed subspace analysis: both networks moved by σ along one target's
    direction of one type, one draw per sample, on every split."""

    context: Shared[dict]  # the targets, their span bases and θ_a − θ_b
    target: tuple[str, int | None]  # (name, index)
    direction: str  # as recorded
    sigma: float
    samples: tuple[int | None, ...]
    seed: int
    coefficients: str
    renormalise: bool

    def records(self, splits: Sequence[str], step, unit) -> list[dict]:
        """Its records without metrics, in the order of :func:`_plan`."""
        name, index = self.target
        return [{**_record("direction", self.direction, name, index, base, self.sigma, sample,
                           split), "step": step, "unit": unit}
                for sample in self.samples for base in BASES for split in splits]

    def keys(self, splits, step, unit):
        return [point_key(r) for r in self.records(splits, step, unit)]

    def __call__(self, evaluator, a, b, step, unit, stored):
        context = self.context.get()
        target = context["targets"][self.target]
        device = evaluator.device
        states = {"a": {k: v.to(device) for k, v in a.items()},
                  "b": {k: v.to(device) for k, v in b.items()}}
        basis = context["bases"].get(self.target)
        basis = None if basis is None else basis.to(device)
        difference = context["difference"].to(device)
        known = {point_key(r) for r in stored}
        todo = [r for r in self.records(list(evaluator.splits), step, unit)
                if point_key(r) not in known]
        records: list[dict] = []
        skip = _warn_once()
        for sample in self.samples:
            points = [r for r in todo if r["sample"] == sample]
            if points:
                records += _draw_records(evaluator, states, target, basis, difference,
                                         self.direction, self.sigma, sample, points, self.seed,
                                         self.coefficients, self.renormalise, skip) or []
        return records


def _by_target(records: Sequence[dict]) -> dict[tuple, list[dict]]:
    """The ``direction`` records of each target, keyed by (name, index)."""
    by_target: dict[tuple, list[dict]] = {}
    for r in records:
        if r["kind"] == "direction":
            by_target.setdefault((r["group"], r["group_index"]), []).append(r)
    return by_target


def _warn_once():
    """``skip(reason, *key)``: logs ``reason`` the first time it sees ``key``."""
    warned: set[tuple] = set()

    def skip(reason: str, *key) -> None:
        if key not in warned:
            warned.add(key)
            log.warning(reason)

    return skip


def _span_bases(sources: Sequence[Source], parameter_keys, size: int, max_memory: int, device):
    """``basis(target)``: the orthonormal basis of the snapshots' span in the target's
    coordinates, on ``device``; the snapshot matrix of all ``size`` parameters is built once,
    at the first call, when it fits in ``max_memory``."""
    everything = None

    def basis(target: Target) -> torch.Tensor:
        nonlocal everything
        if everything is None and len(sources) * size * 4 <= max_memory:
            everything = snapshot_matrix(sources, parameter_keys)
        if everything is None:
            matrix = snapshot_matrix(sources, target.keys)
        else:
            matrix = everything if target.index is None else everything[target.rows]
        found = orthonormal_basis(matrix.to(device))
        del matrix
        log.info("%s: %d parameters, span of rank %d from %d snapshots", _what(target),
                 target.size, found.shape[1], len(sources))
        return found

    return basis


def _draw_records(evaluator, states, target, basis, difference, direction, sigma, sample,
                  points, seed, coefficients, renormalise, skip) -> list[dict] | None:
    """The records of ``points``, the networks of one draw (a direction, σ and sample) on
    their splits; None where the target has no such direction (``skip`` says why)."""
    vectors = _vectors(direction, target, basis, difference, seed, sigma, sample, coefficients,
                       renormalise, skip)
    if vectors is None:
        return None
    new = []
    for base in BASES:
        base_points = [r for r in points if r["base"] == base]
        if not base_points:
            continue
        state = perturb(states[base], target.keys, vectors[base], sigma)
        for r in base_points:
            new.append({**r, **_metrics(evaluator.evaluate(state, r["split"]))})
    return new


def _metrics(metrics: Metrics) -> dict:
    return {"loss": metrics.loss, "accuracy": metrics.accuracy, "n": metrics.n}


def _vectors(direction, target, basis, difference, seed, sigma, sample, coefficients, renormalise,
             skip) -> dict | None:
    """The unit direction (in the target's coordinates) along which each network moves."""
    if direction == "average":
        norm = torch.linalg.vector_norm(difference)
        if norm == 0:
            skip("the two networks are identical: no averaging direction; skipped", "average")
            return None
        d_hat = (difference / norm)[target.rows.to(difference.device)]
        if renormalise:
            group_norm = torch.linalg.vector_norm(d_hat)
            if group_norm == 0:
                skip(f"{_what(target)}: a and b are equal there, no averaging direction; skipped",
                     "average", target.name)
                return None
            d_hat = d_hat / group_norm
        return {"a": d_hat, "b": -d_hat}
    generator = direction_generator(seed, direction, target.name, sigma, sample)
    if direction == "nullspace":
        if basis.shape[1] >= target.size:
            skip(f"{_what(target)}: the snapshots span all {target.size} coordinates, so the null "
                 "space is empty; no null-space points", "nullspace", target.name)
            return None
        v = nullspace_direction(basis, generator)
    else:
        if basis.shape[1] == 0:
            skip(f"{_what(target)}: every snapshot is zero there, so the span is empty; no span "
                 "points", "span", target.name)
            return None
        v = span_direction(basis, generator, coefficients)
    return {"a": v, "b": v}


def perturb(state: StateDict, keys: Sequence[str], vector: torch.Tensor, sigma: float) -> StateDict:
    """``state`` with the parameters ``keys`` moved by σ·``vector``, whose entries are those
    parameters flattened and concatenated in the order of ``keys``."""
    out = dict(state)
    position = 0
    for key in keys:
        size = state[key].numel()
        piece = vector[position:position + size].reshape(state[key].shape)
        out[key] = state[key] + (sigma * piece).to(state[key].dtype)
        position += size
    if position != vector.numel():
        raise ValueError(f"a direction of {vector.numel()} entries for {position} parameters")
    return out


def _flatten(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().reshape(-1).float() for k in keys])


def snapshot_matrix(sources: Sequence[Source], keys: Sequence[str]) -> torch.Tensor:
    """The float32 matrix [d, m] whose columns are the ``keys`` of each source (a state dict or a
    checkpoint path, loaded one at a time), on the CPU."""
    rows = None
    matrix = None
    for column, source in enumerate(sources):
        state = load_state_dict(source) if isinstance(source, (str, Path)) else source
        missing = [k for k in keys if k not in state]
        if missing:
            raise LayerLMCError(f"snapshot {_name(source)} has no tensor '{missing[0]}'")
        vector = torch.cat([state[k].detach().reshape(-1).float().cpu() for k in keys])
        if matrix is None:
            rows = vector.numel()
            matrix = torch.empty(rows, len(sources), dtype=torch.float32)
        elif vector.numel() != rows:
            raise LayerLMCError(
                f"snapshot {_name(source)} has {vector.numel():,} parameters, not {rows:,}"
            )
        matrix[:, column] = vector
    return matrix if matrix is not None else torch.zeros(0, 0)


def _name(source: Source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "(a state dict)"


def _sources_digest(snapshots: Sequence[Source] | None) -> str:
    digest = hashlib.sha256()
    for source in snapshots or []:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(state_digest(dict(source)).encode())
    return digest.hexdigest()[:16]


def _what(target: Target) -> str:
    return "the full network" if target.index is None else f"layer group {target.name}"


def _bytes(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _text(value) -> str:
    return value if isinstance(value, str) else ",".join(f"{v:g}" for v in value)


# -- tables -------------------------------------------------------------------------------------
def tidy(records: Sequence[Mapping]) -> pd.DataFrame:
    """``subspace.csv``: one row per network, direction, group, σ, sample and split; the clean
    networks are ``direction=clean``, ``sigma=0``, group ``full``."""
    rows = []
    order = {}
    for r in records:
        if r.get("kind") == "endpoint":
            rows.append(("clean", r["base"], "full", 0.0, None, r["split"], r["loss"],
                         r["accuracy"]))
        elif r.get("kind") == "direction":
            rows.append((r["direction"], r["base"], r["group"], r["sigma"], r["sample"],
                         r["split"], r["loss"], r["accuracy"]))
            order.setdefault(r["group"], -1 if r["group_index"] is None else r["group_index"])
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS)).astype({"sample": "Int64"})
    if table.empty:
        return table
    direction_order = {"clean": 0, "span": 1, "trajectory": 1, "nullspace": 2, "average": 3}
    table["_g"] = table["group"].map(lambda g: order.get(g, -1))
    table["_d"] = table["direction"].map(direction_order)
    table = table.sort_values(["_g", "_d", "network", "split", "sigma", "sample"], kind="stable")
    return table.drop(columns=["_g", "_d"]).reset_index(drop=True)


def summarise(table: pd.DataFrame, split: str | None = None, fraction: float = 0.1) -> pd.DataFrame:
    """Per group, direction and network: the clean loss, the mean loss over the smallest and the
    largest ``fraction`` of σ values, the least-squares slope d(loss)/dσ and how many points
    diverged (non-finite loss), on ``split`` (default ``test`` when present)."""
    if table.empty:
        return pd.DataFrame()
    split = split or ("test" if "test" in set(table["split"]) else table["split"].iloc[0])
    table = table[table["split"] == split]
    clean = table[table["direction"] == "clean"].set_index("network")["loss"]
    rows = []
    for (group, direction, network), part in table[table["direction"] != "clean"].groupby(
            ["group", "direction", "network"], sort=False):
        sigmas = np.sort(part["sigma"].unique())
        take = max(1, round(fraction * len(sigmas)))
        low, high = sigmas[:take], sigmas[-take:]
        finite = part[np.isfinite(part["loss"])]
        slope = (float(np.polyfit(finite["sigma"], finite["loss"], 1)[0])
                 if finite["sigma"].nunique() > 1 else float("nan"))
        rows.append({
            "group": group, "direction": direction, "network": network,
            "clean": float(clean.get(network, float("nan"))),
            "low σ": float(part[part["sigma"].isin(low)]["loss"].mean()),
            "high σ": float(part[part["sigma"].isin(high)]["loss"].mean()),
            "slope": slope, "diverged": int((~np.isfinite(part["loss"])).sum()),
        })
    return pd.DataFrame(rows)


# -- training runs and the recipe ---------------------------------------------------------------
def trajectory_snapshots(
    a_checkpoints: Mapping[int, Path], b_checkpoints: Mapping[int, Path], step: int | None = None,
    every: int = 1, with_init: bool = False,
) -> list[Path]:
    """The checkpoints of both runs up to ``step`` (default the last common one), every
    ``every``-th (the last always), without step 0 (the initialization) unless ``with_init``:
    the notebooks snapshot after each epoch."""
    if every < 1:
        raise LayerLMCError(f"--every must be at least 1, got {every}")
    common = sorted(set(a_checkpoints) & set(b_checkpoints))
    if not common:
        raise LayerLMCError("the two runs have no checkpoint step in common")
    last = common[-1] if step is None else step
    steps = [s for s in common if s <= last and (with_init or s > 0)]
    if not steps:
        raise LayerLMCError(
            f"no checkpoints after the initialization up to step {last}; add --with-init"
        )
    chosen = steps[::every]
    if steps[-1] not in chosen:
        chosen.append(steps[-1])
    return [a_checkpoints[s] for s in chosen] + [b_checkpoints[s] for s in chosen]


