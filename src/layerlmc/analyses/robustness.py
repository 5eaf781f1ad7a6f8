"""Is the averaging direction special? Random directions of the same norm (PAPER.md §4.1).

For each layer group and base, the group is moved from the base along two kinds of direction
while every other tensor stays at the base:

- ``average``: towards the other model's group, i.e. the group path of the barrier analyses
  (``kind="group"`` records, identical to those ``layerlmc barriers`` writes);
- ``random``: towards a random point ``r = base_g + d·u/‖u‖`` with ``u ~ N(0, I)`` and
  ``d = ‖b_g − a_g‖`` (the norm over the group's floating tensors, concatenated), ``samples``
  seeded draws (``kind="direction"``, ``direction="random"``, ``sample=i`` records).

Both are measured by the **step fraction** ``t``: the point ``base_g + t·(target_g − base_g)``,
0 = the base itself, 1 = a full step (the other model's group, or the random point ``r``).
Random-direction records store ``alpha = t``. Group records keep the barrier convention
(``alpha`` 0 = a, 1 = b), so for base ``b`` the step fraction is ``1 − alpha``:
:func:`step_fraction` is the one place that mapping lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.checkpoints import StateDict, check_pair, reorder_like, state_digest
from ..core.groups import LayerGroup, layer_groups, select_groups, tied_keys
from ..core.options import flat_options
from ..core.paths import BASES, Path, group_paths, parse_alphas
from ..core.plan import as_list
from ..core.records import SCHEMA, RunDir, point_key
from ..errors import LayerLMCError
from ..evaluate import Evaluator, Metrics
from ..evaluate.alignment import AlignOptions, StepAligner, alignment_input
from ..evaluate.options import EvalOptions, analysis_inputs, build_evaluator
from ..evaluate.points import bar_disabled, evaluate_paths
from .cells import PathWork, evaluate_cells
from .executors import Executor, using_executor
from .trajectory import (
    _common_folder,
    _load,
    find_checkpoints,
    is_glob,
    note_step_digests,
    select_steps,
)

log = logging.getLogger("layerlmc")

DIRECTIONS = ("average", "random")
#: ``--per-tensor``: one group per tensor, ``X.weight`` with ``X.bias`` and ``X_weight`` with
#: ``X_bias`` (e.g. ``in_proj_weight``/``in_proj_bias``), as in the paper's ViT study; the
#: group is named ``X``. Used as the regex of the ``block`` scheme, so it must match every key.
PER_TENSOR_PATTERN = r"^(.*?)(?:[._](?:weight|bias))?$"
TABLE_COLUMNS = (
    "step", "unit", "group", "group_index", "base", "split", "direction", "step_fraction",
    "alpha", "loss_mean", "loss_std", "accuracy_mean", "accuracy_std", "samples",
)


def step_fraction(direction: str, base: str, alpha: float) -> float:
    """How far a point is from its base, as a fraction of the step to its target.

    ``direction`` is ``average`` (a group-path record, or ``kind="group"``) or ``random``
    (``kind="direction"``). Group records keep α=0 = a, so for base ``b`` the fraction is
    ``1 − α``; random records store the fraction itself. The map is its own inverse: it also
    gives the group-path α of a fraction.
    """
    if direction in ("average", "group") and base == "b":
        return round(1.0 - float(alpha), 12)
    return float(alpha)


def grouping(groups: str = "module", patterns: Sequence[str] = (),
             per_tensor: bool = False) -> tuple[str, tuple[str, ...]]:
    """The layer-group scheme and patterns an analysis uses (``per_tensor`` included)."""
    if per_tensor:
        if groups != "module" or patterns:
            raise LayerLMCError("--per-tensor is a grouping of its own; drop --groups/--pattern")
        return "block", (PER_TENSOR_PATTERN,)
    return groups, tuple(patterns)


def robustness_groups(
    state: StateDict,
    model: torch.nn.Module | None = None,
    *,
    groups: str = "module",
    patterns: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    per_tensor: bool = False,
) -> list[LayerGroup]:
    """The groups that move: those holding a floating tensor (``layers`` selects by name), in
    network order. ``per_tensor`` pairs each weight with its bias (:data:`PER_TENSOR_PATTERN`);
    buffers such as BN running statistics then form groups of their own."""
    scheme, patterns = grouping(groups, patterns, per_tensor)
    tied = tied_keys(model) if model is not None else ()
    found = [g for g in layer_groups(state, scheme, patterns, tied=tied)
             if any(state[k].is_floating_point() for k in g.keys)]
    return select_groups(found, as_list(layers) or None)


def averaging_paths(groups: Sequence[LayerGroup], bases: Sequence[str],
                    fractions: Sequence[float]) -> list[Path]:
    """The group paths that put each group at the step ``fractions`` from each base."""
    paths: list[Path] = []
    for base in bases:
        alphas = sorted({step_fraction("average", base, t) for t in fractions})
        paths += group_paths(groups, [base], alphas)
    return paths


def direction_seed(seed: int, step: int | None, group_index: int, base: str, sample: int) -> int:
    """The generator seed of one random direction: a digest of its cell, so each cell is
    reproducible on its own and independent of how many samples or groups a run asks for."""
    text = f"robustness:{seed}:{step}:{group_index}:{base}:{sample}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def random_direction(
    a: StateDict, b: StateDict, keys: Sequence[str], *, seed: int, step: int | None,
    group_index: int, base: str, sample: int,
) -> dict[str, torch.Tensor]:
    """The step ``δ = r − base_g`` to a random point at the distance of the other model.

    ``δ = d·u/‖u‖`` over ``keys`` (floating tensors, in this order) with ``u ~ N(0, I)``
    drawn on the CPU from a generator seeded by :func:`direction_seed` (so the same on every
    device) and ``d = ‖b_g − a_g‖``, both norms over the keys concatenated; ``‖δ‖ = d`` up to
    float rounding. Tensors are on ``a``'s device, in each key's dtype (float32 for 16-bit).
    """
    if not keys:
        return {}
    distance = math.sqrt(sum(
        float(torch.sum((b[k].double() - a[k].double()) ** 2)) for k in keys))
    generator = torch.Generator().manual_seed(direction_seed(seed, step, group_index, base, sample))
    sizes = [a[k].numel() for k in keys]
    flat = torch.randn(sum(sizes), generator=generator, dtype=torch.float32)
    parts = {k: piece.view(a[k].shape).to(a[k].device, _work_dtype(a[k]))
             for k, piece in zip(keys, torch.split(flat, sizes))}
    # the norm of the tensors actually used, so that ‖δ‖ = d holds in their dtype
    norm = math.sqrt(sum(float(torch.sum(p.double() ** 2)) for p in parts.values()))
    scale = distance / norm if norm > 0 else 0.0
    return {k: p.mul_(scale) for k, p in parts.items()}


def moved(state: Mapping[str, torch.Tensor], step: Mapping[str, torch.Tensor],
          fraction: float) -> dict[str, torch.Tensor]:
    """``state`` with each key of ``step`` moved by ``fraction·step``; every other entry is the
    state's own tensor, not a copy."""
    out = dict(state)
    for key, delta in step.items():
        base = state[key]
        out[key] = torch.add(base.to(delta.dtype), delta, alpha=fraction).to(base.dtype)
    return out


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def evaluate_directions(
    evaluator: Evaluator,
    a: StateDict,
    b: StateDict,
    groups: Sequence[LayerGroup],
    *,
    bases: Sequence[str] = BASES,
    fractions: Sequence[float] = (0.0, 0.5, 1.0),
    samples: int = 5,
    seed: int = 0,
    base_metrics: Mapping[tuple[str, str], Metrics],
    run: RunDir | None = None,
    stored: Mapping[tuple, dict] | None = None,
    step: int | None = None,
    unit: str | None = None,
    moving: Mapping[str, Sequence[str]] | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Random-direction records (``kind="direction"``) of every group, base, sample and step
    fraction, on every split of ``evaluator``.

    ``base_metrics[(base, split)]`` are the base models' metrics: the points at fraction 0, and
    all points of a group that is equal in a and b (``d = 0``), are the base itself and are not
    evaluated again. Records in ``stored`` (keyed by ``point_key``) are reused; new ones are
    appended to ``run`` as each point finishes. ``moving`` maps a group name to the keys that
    move (default: its floating keys).
    """
    stored = stored or {}
    device = evaluator.device
    a = {k: v.to(device) for k, v in a.items()}
    b = {k: v.to(device) for k, v in b.items()}
    states = {"a": a, "b": b}
    keys_of = {g.name: list(moving[g.name]) if moving is not None else
               [k for k in g.keys if a[k].is_floating_point()] for g in groups}
    still = {g.name: all(torch.equal(a[k], b[k]) for k in keys_of[g.name]) for g in groups}
    records: list[dict] = []
    todo: list[tuple[LayerGroup, str, int, float, list[str]]] = []
    for base in bases:
        for group in groups:
            for sample in range(samples):
                for t in fractions:
                    missing = []
                    for split in evaluator.splits:
                        record = _direction_record(group, base, t, sample, split, step, unit)
                        old = stored.get(point_key(record))
                        if old is None:
                            missing.append(split)
                        else:
                            records.append(old)
                    if not missing:
                        continue
                    if t == 0.0 or still[group.name]:
                        new = [_direction_record(group, base, t, sample, split, step, unit,
                                                 base_metrics[(base, split)]) for split in missing]
                        records += new
                        if run is not None:
                            run.append_points(new)
                    else:
                        todo.append((group, base, sample, t, missing))
    cell, delta = None, {}
    bar = tqdm(total=len(todo), desc="random directions", unit="point",
               disable=bar_disabled(progress, len(todo)))
    with bar:
        for group, base, sample, t, missing in todo:
            if cell != (group.name, base, sample):
                cell = (group.name, base, sample)
                delta = random_direction(a, b, keys_of[group.name], seed=seed, step=step,
                                         group_index=group.index, base=base, sample=sample)
            state = evaluator.prepare(moved(states[base], delta, t))
            new = [_direction_record(group, base, t, sample, split, step, unit,
                                     evaluator.evaluate(state, split)) for split in missing]
            records += new
            if run is not None:
                run.append_points(new)
            bar.update()
    return records


@dataclasses.dataclass(frozen=True)
class DirectionWork:
    """A cell of a distributed robustness analysis: every random direction of one group and
    base, at every step fraction (:func:`evaluate_directions` for that group and base)."""

    group: LayerGroup
    base: str
    fractions: tuple[float, ...]
    samples: int
    seed: int
    moving: tuple[str, ...]

    def keys(self, splits, step, unit):
        return [point_key(_direction_record(self.group, self.base, t, sample, split, step, unit))
                for sample in range(self.samples) for t in self.fractions for split in splits]

    def __call__(self, evaluator, a, b, step, unit, stored):
        base_metrics = {(r["base"], r["split"]): Metrics(r["loss"], r["accuracy"], r["n"])
                        for r in stored if r["kind"] == "endpoint"}
        return evaluate_directions(
            evaluator, a, b, [self.group], bases=[self.base], fractions=self.fractions,
            samples=self.samples, seed=self.seed, base_metrics=base_metrics,
            stored={point_key(r): r for r in stored}, step=step, unit=unit,
            moving={self.group.name: self.moving}, progress=False)


def _direction_record(group: LayerGroup, base: str, t: float, sample: int, split: str,
                      step: int | None, unit: str | None,
                      metrics: Metrics | None = None) -> dict:
    record = {
        "schema": SCHEMA, "step": step, "unit": unit, "kind": "direction", "group": group.name,
        "group_index": group.index, "base": base, "order": None, "alpha": t,
        "direction": "random", "sigma": None, "sample": sample, "split": split,
    }
    if metrics is not None:
        record.update(loss=metrics.loss, accuracy=metrics.accuracy, n=metrics.n)
    return record


def robustness_table(records: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """``robustness.csv``: one row per step, group, base, split, direction and step fraction,
    with the mean and standard deviation (ddof 1; empty for one sample) over samples.

    The averaging direction has one sample (its group-path point); a non-finite loss of any
    sample makes the mean non-finite rather than being skipped.
    """
    frame = pd.DataFrame(list(records) if not isinstance(records, pd.DataFrame) else records)
    if frame.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    average = frame[frame["kind"] == "group"].assign(direction="average")
    random = frame[(frame["kind"] == "direction") & (frame["direction"] == "random")]
    rows = pd.concat([average, random], ignore_index=True)
    if rows.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    rows["step_fraction"] = [step_fraction(d, base, alpha) for d, base, alpha
                             in zip(rows["direction"], rows["base"], rows["alpha"])]
    keys = ["step", "unit", "group", "group_index", "base", "split", "direction", "step_fraction"]
    # pandas drops null keys in groupby: a single pair has no step or unit
    keyed = rows.astype({"step": object, "unit": object}).fillna({"step": "\0", "unit": "\0"})
    table = keyed.groupby(keys, sort=False).agg(
        alpha=("alpha", "first"),
        loss_mean=("loss", lambda s: s.mean(skipna=False)),
        loss_std=("loss", "std"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        samples=("loss", "size"),
    ).reset_index()
    table = table.replace({c: {"\0": None} for c in ("step", "unit")})
    table = table.assign(
        _order=table["direction"].map({d: i for i, d in enumerate(DIRECTIONS)}),
        _step=pd.to_numeric(table["step"], errors="coerce"),
        _split=table["split"].map({s: i for i, s in enumerate(dict.fromkeys(frame["split"]))}),
    ).sort_values(["_step", "base", "group_index", "_split", "_order", "step_fraction"],
                  kind="stable")
    table = table.drop(columns=["_order", "_step", "_split"]).reset_index(drop=True)
    return table[list(TABLE_COLUMNS)].astype({"step": "Int64", "group_index": "Int64"})


def metric_values(table: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    """Mean and std of ``loss`` or ``error`` (= 1 − accuracy, a fraction) per row."""
    if metric == "loss":
        return table["loss_mean"].astype(float), table["loss_std"].astype(float)
    if metric == "error":
        return 1.0 - table["accuracy_mean"].astype(float), table["accuracy_std"].astype(float)
    raise LayerLMCError(f"unknown metric '{metric}': loss or error")


def base_values(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The base models' own ``metric`` per step, base and split (the ``full`` row of the
    figures): the averaging direction at step fraction 0, which every group shares."""
    rows = table[(table["direction"] == "average") & (table["step_fraction"] == 0.0)]
    rows = rows.assign(value=metric_values(rows, metric)[0])
    keyed = rows.assign(_step=pd.to_numeric(rows["step"], errors="coerce").fillna(-1))
    return keyed.drop_duplicates(["_step", "base", "split"])[["step", "base", "split", "value"]]


def robustness_summary(table: pd.DataFrame, at: float = 0.5, metric: str = "loss",
                       step: int | None = None) -> pd.DataFrame:
    """Per split, base and group at ``step`` (default: the last one): the averaging direction's
    ``metric`` at step fraction ``at``, the random directions' mean and std, and which is
    higher (``average``, ``random`` or ``equal``)."""
    columns = ["step", "split", "base", "group", "group_index", "base_value", "average",
               "random_mean", "random_std", "samples", "higher"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    steps = pd.to_numeric(table["step"], errors="coerce")
    if step is None and steps.notna().any():
        step = int(steps.max())
    chosen = table[steps == step] if step is not None else table[steps.isna()]
    mean, std = metric_values(chosen, metric)
    chosen = chosen.assign(_mean=mean, _std=std)
    at_fraction = chosen[(chosen["step_fraction"] - at).abs() < 1e-9]
    base = {(r.base, r.split): r.value for r in base_values(chosen, metric).itertuples()}
    rows = []
    for (split, base_name, group), cell in at_fraction.groupby(["split", "base", "group"],
                                                               sort=False):
        average = cell[cell["direction"] == "average"]
        random = cell[cell["direction"] == "random"]
        avg = float(average["_mean"].iloc[0]) if len(average) else math.nan
        rmean = float(random["_mean"].iloc[0]) if len(random) else math.nan
        higher = ("n/a" if math.isnan(avg) or math.isnan(rmean) else
                  "average" if avg > rmean else "random" if rmean > avg else "equal")
        rows.append({
            "step": step, "split": split, "base": base_name, "group": group,
            "group_index": int(cell["group_index"].iloc[0]),
            "base_value": base.get((base_name, split), math.nan), "average": avg,
            "random_mean": rmean,
            "random_std": float(random["_std"].iloc[0]) if len(random) else math.nan,
            "samples": int(random["samples"].iloc[0]) if len(random) else 0, "higher": higher,
        })
    summary = pd.DataFrame(rows, columns=columns)
    split_rank = {split: i for i, split in enumerate(dict.fromkeys(table["split"]))}
    summary = summary.assign(_split=summary["split"].map(split_rank))
    summary = summary.sort_values(["_split", "base", "group_index"], kind="stable")
    return summary.drop(columns="_split").reset_index(drop=True)


@flat_options
def robustness(
    model: torch.nn.Module,
    a: StateDict | str | FilePath | Mapping[int, str | FilePath],
    b: StateDict | str | FilePath | Mapping[int, str | FilePath],
    data: Mapping[str, object],
    out: str | FilePath | None = None,
    *,
    samples: int = 5,
    alphas: str | Sequence[float] = "0,0.5,1",
    at: float = 0.5,
    bases: Sequence[str] = BASES,
    groups: str = "module",
    patterns: Sequence[str] = (),
    layers: Sequence[str] | None = None,
    per_tensor: bool = False,
    unit: str = "epoch",
    every: int | None = None,
    steps: Sequence[int] | None = None,
    allow_missing: bool = False,
    evaluation: EvalOptions = EvalOptions(),
    alignment: AlignOptions = AlignOptions(),
    executor: str | Executor = "local",
    address: str | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> pd.DataFrame:
    """Averaging direction vs random directions of the same norm, per group and base.

    ``a`` and ``b`` are one pair (state dicts, checkpoint files or model folders; records have
    ``step`` null) or mappings step → checkpoint file or model folder, or globs of them
    (``'ckpts/a/step-*'``, read by :func:`find_checkpoints`), of which the last
    common step is analysed, or every ``every``-th (the last always), or exactly ``steps``.
    ``alphas`` is the grid of step fractions t (0 = the base, 1 = a full step; 0 is always
    added: it costs nothing); ``samples`` random directions are drawn per step, group and
    base, seeded by ``evaluation.seed`` (``seed``). ``at`` is the fraction the heatmaps show.
    ``evaluation`` is an :class:`~layerlmc.evaluate.options.EvalOptions` (or its fields as
    keywords): ``bn`` is the BatchNorm policy, with ``bn_batches``, ``bn_batch_size`` and
    ``bn_split`` for
    ``recompute``, as in :func:`layerlmc.barriers`; under any policy but ``interpolate`` the
    running statistics are no part of a random direction (nor of its norm). ``evaluator`` and
    ``precision`` (the autocast dtype of the forward passes: ``fp32``, ``bf16``, ``fp16``) are
    those of :func:`layerlmc.barriers`.
    ``executor`` (``local``, ``ray`` with the cluster's ``address``, or an
    :class:`~layerlmc.analyses.executors.Executor`) runs the cells (per step: each averaging path, and
    each group and base's random directions); the records are the same.

    ``alignment`` (``align="weight"`` or ``"activation"``, as in :func:`layerlmc.barriers`)
    permutes each step's ``b`` onto its ``a`` first (each step its own permutation), so the
    averaging direction is that of the aligned pair; the permutations are saved next to the
    records.

    Returns the ``robustness.csv`` table (:func:`robustness_table`). With ``out``, the folder
    gets ``config.yaml``, ``run.json``, ``points.jsonl`` and ``robustness.csv``
    (:func:`layerlmc.robustness` also draws ``figures/``); a rerun with the same ``out`` evaluates only what is missing.
    """
    if samples < 1:
        raise LayerLMCError(
            f"--samples must be at least 1 (random directions per group), got {samples}")
    fractions = tuple(sorted({0.0, *parse_alphas(alphas)}))
    if not any(abs(t - at) < 1e-9 for t in fractions):
        raise LayerLMCError(f"--at {at:g} is not on the step-fraction grid {_grid(fractions)}")
    bases = as_list(bases)
    for base in bases:
        if base not in BASES:
            raise LayerLMCError(f"unknown base '{base}': the base is a or b")
    if not bases:
        raise LayerLMCError("no base given: choose a, b or both")
    scheme, scheme_patterns = grouping(groups, patterns, per_tensor)
    expected = model.state_dict()

    a, b = (find_checkpoints(x) if is_glob(x) else x for x in (a, b))
    if _is_steps(a) != _is_steps(b):
        raise LayerLMCError(
            "give a and b both as one checkpoint each or both as step → checkpoint mappings "
            "(or globs)")
    if _is_steps(a):
        chosen = select_steps(a, b, every or 1, steps, allow_missing)
        if every is None and not steps:
            chosen = chosen[-1:]  # robustness costs samples × groups evaluations per step
        pairs = [(step, a[step], b[step]) for step in chosen]
        step_unit = unit
    else:
        if steps or every:
            raise LayerLMCError(
                "--steps and --every select checkpoints of folders, not of one pair")
        pairs = [(None, a, b)]
        step_unit = None
    first_a, first_b = _state(pairs[0][1], expected), _state(pairs[0][2], expected)
    check_pair(first_a, first_b, expected)
    group_list = robustness_groups(first_a, model, groups=groups, patterns=patterns,
                                   layers=layers, per_tensor=per_tensor)
    evaluator = build_evaluator(model, data, first_a, evaluation=evaluation)
    seed = evaluation.seed
    aliases = {k for tie in tied_keys(model) for k in tie[1:]}
    # a tied alias is not passed to the model, so it takes no part in the norm or the step;
    # nor do running statistics the policy recomputes, ignores or keeps at the base, so that
    # random and averaging directions move the same tensors
    fixed = aliases | (evaluator.bn_keys if evaluator.bn != "interpolate" else set())
    moving = {g.name: [k for k in g.keys if first_a[k].is_floating_point() and k not in fixed]
              for g in group_list}
    paths = averaging_paths(group_list, bases, fractions)

    # the cluster is reached (or refused) before the output folder is claimed
    with using_executor(executor, address, device=evaluator.device) as runner:
        run = RunDir(out) if out is not None else None
        previous = run.read_run() if run is not None else None
        if run is not None:
            inputs = analysis_inputs(model, data, evaluation, scheme, scheme_patterns,
                                     evaluator.bn_summary, evaluator.precision)
            # the stored directions depend on the seed, which no point key records
            inputs["direction seed"] = str(seed)
            inputs["alignment"] = alignment_input(alignment)
            if step_unit is None:
                inputs = {"checkpoint a": state_digest(first_a), "checkpoint b": state_digest(first_b),
                          **inputs}
            else:
                inputs = {"checkpoints": f"{_common_folder(a)} | {_common_folder(b)}",
                          "unit": step_unit, **inputs}
            settings = dict(config) if config is not None else {
                "samples": samples, "alphas": _grid(fractions), "at": at, "bases": bases,
                "groups": groups, "patterns": list(patterns), "layers": as_list(layers),
                "per_tensor": per_tensor, "unit": step_unit,
                "steps": [p[0] for p in pairs] if step_unit else None, "splits": as_list(evaluation.splits),
                "max_examples": evaluation.max_examples, "batch_size": evaluation.batch_size,
                "device": evaluation.device, "seed": seed, "bn": evaluation.bn,
                "bn_batches": evaluation.bn_batches, "bn_batch_size": evaluation.bn_batch_size,
                "bn_split": evaluation.bn_split,
                "evaluator": evaluator.kind, "precision": evaluator.precision,
                "loss_mean": evaluation.loss_mean, "align": alignment.align,
            }
            run.claim(inputs, settings, str(evaluator.device))
        # what each step's records were computed from (claim rewrote run.json): a checkpoint
        # replaced later must not be mixed with the records of its predecessor
        step_digests = {int(k): v for k, v in ((previous or {}).get("step_digests") or {}).items()}
        if run is not None and step_digests:
            run.update_run(step_digests={str(k): v for k, v in sorted(step_digests.items())})

        aligner = StepAligner(model, data, alignment, run)

        def loaded():
            """Each pair, loaded and checked against the checkpoints it was analysed from."""
            for number, (step, source_a, source_b) in enumerate(pairs, start=1):
                if number == 1:
                    state_a, state_b = first_a, first_b
                else:
                    state_a, state_b = _state(source_a, expected), _state(source_b, expected)
                    check_pair(state_a, state_b, expected)
                if run is not None and step is not None:
                    note_step_digests(run, step_digests, step, state_a, state_b, unit)
                if step is not None:
                    log.info("%s %d (%d of %d)", unit, step, number, len(pairs))
                state_b, = aligner(step, state_a, state_b, unit)
                yield step, state_a, state_b

        records: list[dict] = []
        with run.status_on_error() if run is not None else contextlib.nullcontext():
            if runner.name == "local":
                stored = {point_key(r): r for r in run.read_points()} if run is not None else {}
                for step, state_a, state_b in loaded():
                    found = evaluate_paths(evaluator, state_a, state_b, paths, run=run, step=step,
                                           unit=step_unit, progress=progress)
                    base_metrics = {(r["base"], r["split"]): Metrics(r["loss"], r["accuracy"], r["n"])
                                    for r in found if r["kind"] == "endpoint"}
                    found += evaluate_directions(
                        evaluator, state_a, state_b, group_list, bases=bases, fractions=fractions,
                        samples=samples, seed=seed, base_metrics=base_metrics, run=run, stored=stored,
                        step=step, unit=step_unit, moving=moving, progress=progress,
                    )
                    records += found
            else:
                cells = [PathWork((path,)) for path in paths] + [
                    DirectionWork(group, base, fractions, samples, seed, tuple(moving[group.name]))
                    for base in bases for group in group_list]
                records = evaluate_cells(runner, evaluator, loaded(), lambda step: cells, run=run,
                                         unit=step_unit, progress=progress)
        table = robustness_table(records)
        if run is not None:
            run.write_file("robustness.csv", table.to_csv(index=False))
            run.finish("complete")
        return table


def _is_steps(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(k, int) for k in value)


def _state(source: StateDict | str | FilePath, expected: Mapping[str, torch.Tensor]) -> StateDict:
    if isinstance(source, (str, FilePath)):
        return _load(source, expected)
    return reorder_like(dict(source), expected)


def _grid(fractions: Sequence[float]) -> str:
    return ",".join(f"{t:g}" for t in fractions)


__all__ = [
    "DIRECTIONS", "PER_TENSOR_PATTERN", "TABLE_COLUMNS", "averaging_paths", "base_values",
    "direction_seed", "evaluate_directions", "grouping", "metric_values", "moved",
    "random_direction", "robustness", "robustness_groups", "robustness_summary",
    "robustness_table", "step_fraction",
]
