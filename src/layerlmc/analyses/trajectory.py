"""Barriers and distances over training: one cell per (step, path), resumable cell by cell."""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from ..core.barriers import compute_barriers
from ..core.checkpoints import (
    StateDict,
    check_pair,
    folder_problem,
    load_state_dict,
    reorder_like,
    state_digest,
)
from ..core.groups import LayerGroup, layer_groups, tied_keys
from ..core.options import flat_options
from ..core.plan import PathOptions, plan_paths
from ..core.records import RunDir
from ..errors import LayerLMCError
from ..evaluate.alignment import AlignOptions, StepAligner, alignment_input
from ..evaluate.options import EvalOptions, analysis_inputs, build_evaluator
from .cells import evaluate_steps
from .executors import Executor, using_executor

log = logging.getLogger("layerlmc")
TRAJECTORY_ALPHAS = "0,0.5,1"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
DISTANCE_COLUMNS = ("step", "unit", "group", "group_index", "l2_ab", "cos_ab",
                    "l2_a_init", "cos_a_init", "l2_b_init", "cos_b_init")


def find_checkpoints(source: str | Path) -> dict[int, Path]:
    """Checkpoints of a folder or a glob, keyed by step: the last number in each file or model
    folder name (``epoch_0010.safetensors`` → 10, ``exp_0_epoch_20.pt`` → 20, ``step1500.bin``
    → 1500, the Hugging Face Trainer's ``checkpoint-500/`` → 500).

    A step is a checkpoint file (:data:`CHECKPOINT_SUFFIXES`) or a model folder that a
    registered folder loader reads (a Hugging Face folder with ``config.json`` and its weights;
    :func:`~layerlmc.core.checkpoints.folder_problem`). Every match of a glob must be one of
    them (``optimizer_*`` files aside); in a folder, other files and subfolders are skipped.
    """
    text = str(source)
    pattern = any(ch in text for ch in "*?[")
    if pattern:
        found = [Path(p) for p in sorted(glob.glob(text))]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise LayerLMCError(f"checkpoint folder not found: {folder}")
        found = sorted(p for p in folder.iterdir())
    entries = []
    for path in found:
        if path.name.startswith("optimizer_"):
            continue  # a training run keeps its optimizer state beside each checkpoint
        if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
            entries.append((path, path.stem))
        elif path.is_dir() and folder_problem(path) is None:
            # a folder's name is its stem: `checkpoint-1.5e3` has no suffix to drop
            entries.append((path, path.name))
        elif pattern:
            what = (f"a folder no checkpoint loader reads ({folder_problem(path)})" if path.is_dir()
                    else f"not a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
            raise LayerLMCError(f"{path} matches {text} but is {what}; narrow the pattern to "
                                "checkpoint files or model folders")
    steps: dict[int, Path] = {}
    for path, stem in entries:
        numbers = re.findall(r"\d+", stem)
        if not numbers:
            raise LayerLMCError(f"cannot tell the step of checkpoint {path}: its name has no number")
        step = int(numbers[-1])
        if step in steps:
            raise LayerLMCError(f"two checkpoints for step {step}: {steps[step]} and {path}")
        steps[step] = path
    if not steps:
        raise LayerLMCError(f"no checkpoints ({', '.join(CHECKPOINT_SUFFIXES)} files or model "
                            f"folders) found in {source}")
    return dict(sorted(steps.items()))


def is_glob(source: object) -> bool:
    """A glob of checkpoints (``'ckpts/a/step-*'``) rather than one checkpoint's path."""
    return isinstance(source, (str, Path)) and any(ch in str(source) for ch in "*?[")


def as_steps(checkpoints: Mapping[int, str | Path] | str | Path) -> Mapping[int, str | Path]:
    """A step → checkpoint mapping as given, or that of a folder or glob (:func:`find_checkpoints`)."""
    return checkpoints if isinstance(checkpoints, Mapping) else find_checkpoints(checkpoints)


def select_steps(
    a: Mapping[int, Path], b: Mapping[int, Path], every: int = 1, steps: Sequence[int] | None = None,
    allow_missing: bool = False,
) -> list[int]:
    """Steps both sides have; every ``every``-th of them (the last always included) or ``steps``."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if (only_a or only_b) and not allow_missing:
        parts = [f"steps {_short(only_a)} have no checkpoint b" if only_a else "",
                 f"steps {_short(only_b)} have no checkpoint a" if only_b else ""]
        raise LayerLMCError("unmatched checkpoints: " + "; ".join(p for p in parts if p)
                            + "; pass --allow-missing to analyse the common steps only")
    common = sorted(set(a) & set(b))
    if not common:
        raise LayerLMCError("the two checkpoint sets have no step in common")
    if steps:
        missing = [s for s in steps if s not in common]
        if missing:
            raise LayerLMCError(f"no checkpoint pair for step(s) {_short(missing)}; available: {_short(common)}")
        return sorted(set(steps))
    if every < 1:
        raise LayerLMCError(f"--every must be at least 1, got {every}")
    chosen = common[::every]
    if common[-1] not in chosen:
        chosen.append(common[-1])
    return chosen


def layer_distances(
    a: StateDict, b: StateDict, a_init: StateDict, b_init: StateDict, groups: Sequence[LayerGroup],
) -> list[dict]:
    """Per group and for the full network: L2 distance and cosine between a and b, and of each
    to its own initialization (floating tensors only, flattened together)."""
    rows = []
    for name, index, keys in [("full", None, [k for g in groups for k in g.keys]),
                              *[(g.name, g.index, list(g.keys)) for g in groups]]:
        keys = [k for k in keys if a[k].is_floating_point()]
        if not keys:
            continue
        va, vb, va0, vb0 = (torch.cat([s[k].detach().reshape(-1).double().cpu() for k in keys])
                            for s in (a, b, a_init, b_init))
        rows.append({
            "group": name, "group_index": index,
            "l2_ab": _l2(va, vb), "cos_ab": _cos(va, vb),
            "l2_a_init": _l2(va, va0), "cos_a_init": _cos(va, va0),
            "l2_b_init": _l2(vb, vb0), "cos_b_init": _cos(vb, vb0),
        })
    return rows


@flat_options
def trajectory(
    model: torch.nn.Module,
    a_checkpoints: Mapping[int, str | Path] | str | Path,
    b_checkpoints: Mapping[int, str | Path] | str | Path,
    data: Mapping[str, object],
    out: str | Path,
    *,
    unit: str = "epoch",
    every: int = 1,
    steps: Sequence[int] | None = None,
    allow_missing: bool = False,
    paths: PathOptions = PathOptions(),
    evaluation: EvalOptions = EvalOptions(),
    alignment: AlignOptions = AlignOptions(),
    executor: str | Executor = "local",
    address: str | None = None,
    progress: bool | None = None,
    config: Mapping | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Full, single-group and cumulative barriers of the pair at every selected step, and the
    per-group distances. ``a_checkpoints`` and ``b_checkpoints`` map step → checkpoint (a file
    or a model folder), or are a folder or glob of them (``'ckpts/a/step-*'``, read by
    :func:`find_checkpoints`), paired by step. Records go to ``out`` (``points.jsonl`` with ``step``/``unit``,
    ``barriers.csv``, ``distances.csv``; :func:`layerlmc.trajectory` also draws ``figures/``).
    A rerun evaluates only missing cells. ``paths`` and ``evaluation`` (or their fields as
    keywords) are those of :func:`layerlmc.barriers`; the full path's grid defaults to
    α = 0, ½, 1 here (:data:`TRAJECTORY_ALPHAS`). ``executor``
    (``local``, ``ray`` with the cluster's ``address``, or an
    :class:`~layerlmc.analyses.executors.Executor`) runs the (step, path) cells: the records are the
    same. ``alignment`` (``align="weight"``, ``align_to="step"`` or ``"final"``;
    :class:`~layerlmc.evaluate.alignment.AlignOptions`) permutes each step's ``b`` onto ``a``
    first, with the step's own permutation or the final step's; the distances are then those
    of the aligned pair (b's initialization permuted alike), and the permutations are saved in
    ``permutations/``. Returns ``(barriers, distances)``."""
    # one full path among many per step: its ends and midpoint are what the heatmaps show
    paths = paths.with_alphas(TRAJECTORY_ALPHAS)
    a_checkpoints, b_checkpoints = as_steps(a_checkpoints), as_steps(b_checkpoints)
    chosen = select_steps(a_checkpoints, b_checkpoints, every, steps, allow_missing)
    expected = model.state_dict()
    init_step = min(set(a_checkpoints) & set(b_checkpoints))
    a_init = _load(a_checkpoints[init_step], expected)
    b_init = _load(b_checkpoints[init_step], expected)
    check_pair(a_init, b_init, expected)
    evaluator = build_evaluator(model, data, a_init, evaluation=evaluation)
    if init_step != 0:
        log.info("no step-0 checkpoints: distances to initialization use step %d", init_step)
    # the cluster is reached (or refused) before the output folder is claimed
    with using_executor(executor, address, device=evaluator.device) as runner:
        run = RunDir(out)
        previous = run.read_run()
        inputs = {
            "checkpoints": f"{_common_folder(a_checkpoints)} | {_common_folder(b_checkpoints)}", "unit": unit,
            **analysis_inputs(model, data, evaluation, paths.groups, paths.patterns,
                              evaluator.bn_summary, evaluator.precision),
            "alignment": alignment_input(alignment, steps=True),
        }
        settings = dict(config) if config is not None else {
            "align": alignment.align, "align_to": alignment.align_to,
            "steps": chosen, "unit": unit, "groups": paths.groups, "cumulative": list(paths.cumulative),
            "definitions": list(paths.definitions), "references": list(paths.references),
            "max_examples": evaluation.max_examples, "bn": evaluation.bn,
            "bn_batches": evaluation.bn_batches, "bn_batch_size": evaluation.bn_batch_size,
            "bn_split": evaluation.bn_split, "evaluator": evaluator.kind,
            "precision": evaluator.precision, "loss_mean": evaluation.loss_mean,
        }
        run.claim(inputs, settings, str(evaluator.device))
        final = None
        if alignment.align != "none" and alignment.align_to == "final":
            final = (_load(a_checkpoints[chosen[-1]], expected), _load(b_checkpoints[chosen[-1]], expected))
            check_pair(*final, expected)
        aligner = StepAligner(model, data, alignment, run, final)
        # what each step's records were computed from: a checkpoint replaced later must not be
        # mixed with records of its predecessor
        step_digests = {int(k): v for k, v in ((previous or {}).get("step_digests") or {}).items()}
        run.update_run(step_digests={str(k): v for k, v in sorted(step_digests.items())})
        group_list = layer_groups(a_init, paths.groups, paths.patterns, tied=tied_keys(model))
        planned = plan_paths(a_init, model, paths=paths)
        distances: list[dict] = []

        def pairs():
            """Each chosen step's checkpoints, loaded and checked, its distances noted."""
            for number, step in enumerate(chosen, start=1):
                a = a_init if step == init_step else _load(a_checkpoints[step], expected)
                b = b_init if step == init_step else _load(b_checkpoints[step], expected)
                check_pair(a, b, expected)
                note_step_digests(run, step_digests, step, a, b, unit)
                log.info("%s %d (%d of %d)", unit, step, number, len(chosen))
                b, b_start = aligner(step, a, b, unit, b_init)
                distances.extend({"step": step, "unit": unit, **row}
                                 for row in layer_distances(a, b, a_init, b_start, group_list))
                yield step, a, b

        with run.status_on_error():
            records = evaluate_steps(runner, evaluator, pairs(), planned, run=run, unit=unit,
                                     progress=progress)
        table = compute_barriers(pd.DataFrame(records), paths.definitions, paths.references)
        distance_table = pd.DataFrame(distances, columns=list(DISTANCE_COLUMNS)).astype({"group_index": "Int64"})
        run.write_barriers(table)
        run.write_file("distances.csv", distance_table.to_csv(index=False))
        run.finish("complete")
        return table, distance_table


def note_step_digests(run: RunDir, step_digests: dict, step: int, a: StateDict, b: StateDict,
                      unit: str) -> None:
    """Record in run.json what ``step``'s records are computed from; a checkpoint replaced
    since an earlier run must not be mixed with the records of its predecessor."""
    digests = [state_digest(a), state_digest(b)]
    if step_digests.get(step, digests) != digests:
        raise LayerLMCError(f"the checkpoints of {unit} {step} changed since {run.path} analysed "
                            "them; choose another --out")
    step_digests[step] = digests
    run.update_run(step_digests={str(k): v for k, v in sorted(step_digests.items())})


def _load(path: str | Path, expected: Mapping[str, torch.Tensor]) -> StateDict:
    return reorder_like(load_state_dict(path), expected)


def _l2(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - y))


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    denominator = float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    return float(x @ y) / denominator if denominator else float("nan")


def _short(values: Sequence[int]) -> str:
    shown = ", ".join(map(str, values[:8]))
    return shown + (f" (+{len(values) - 8} more)" if len(values) > 8 else "")


def _common_folder(checkpoints: Mapping[int, str | Path]) -> str:
    parents = {str(Path(p).resolve().parent) for p in checkpoints.values()}
    return parents.pop() if len(parents) == 1 else ", ".join(sorted(parents))
