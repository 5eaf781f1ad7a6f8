"""Aligning ``b``'s hidden units to ``a``'s before any path is measured (git re-basin).

:class:`AlignOptions` is the option object every analysis over checkpoints takes
(``alignment=``, or ``align="weight"`` as a keyword); :func:`align_pair` returns ``b``
permuted and the :class:`~layerlmc.core.permutations.Matching`. Weight matching is pure tensor
code (:func:`~layerlmc.core.permutations.weight_matching`); activation matching is here because
it runs both networks on data (:func:`activation_matching`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checkpoints import StateDict, save_state_dict
from ..core.permutations import (
    MAX_ROUNDS,
    Matching,
    Spec,
    apply_permutation,
    check_spec,
    permutation_spec,
    weight_matching,
)
from ..errors import LayerLMCError, unknown

log = logging.getLogger("layerlmc")

METHODS = ("none", "weight", "activation")

#: how many examples of the split activation matching correlates by default
ACTIVATION_EXAMPLES = 1000


@dataclass(frozen=True)
class AlignOptions:
    """Whether and how ``b`` is permuted onto ``a`` first: ``align`` is ``none``, ``weight``
    (coordinate descent over the groups, seeded by ``align_seed``, at most ``align_rounds``
    rounds) or ``activation`` (correlations of the units' outputs on ``align_examples``
    examples of split ``align_split``, drawn with ``align_seed``). Over training steps,
    ``align_to`` says which permutation each step's ``b`` gets: its own (``step``: ``b`` of
    that step matched to ``a`` of that step) or the final step's (``final``: one permutation
    for the whole trajectory). It changes the numbers, so it is a stored input of a run
    folder."""

    align: str = "none"
    align_seed: int = 0
    align_rounds: int = MAX_ROUNDS
    align_split: str = "train"
    align_examples: int = ACTIVATION_EXAMPLES
    align_to: str = "step"


ALIGN_TO = ("step", "final")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise unknown("alignment method", method, METHODS)


def alignment_input(options: AlignOptions, steps: bool = False) -> str:
    """The value of the ``alignment`` input of a run folder (``steps``: over training steps,
    where ``align_to`` matters too)."""
    if options.align == "none":
        return "none"
    if options.align == "weight":
        text = f"weight matching (seed {options.align_seed}, at most {options.align_rounds} rounds)"
    else:
        text = (f"activation matching ({options.align_examples} examples of "
                f"'{options.align_split}', seed {options.align_seed})")
    if steps:
        text += ", each step's own" if options.align_to == "step" else ", the final step's"
    return text


def _examples(data: Mapping[str, object] | None, options: AlignOptions) -> torch.Tensor:
    if data is None:
        raise LayerLMCError("activation matching needs data (--data): it compares the units' "
                            "outputs on examples")
    if options.align_split not in data:
        raise unknown("split for activation matching", options.align_split, data)
    inputs = data[options.align_split]
    inputs = inputs[0] if isinstance(inputs, (tuple, list)) else torch.stack([inputs[i][0] for i in range(len(inputs))])
    generator = torch.Generator().manual_seed(options.align_seed)
    count = min(options.align_examples, len(inputs))
    return inputs[torch.randperm(len(inputs), generator=generator)[:count]]


def _unit_outputs(model: torch.nn.Module, state: StateDict, spec: Spec, inputs: torch.Tensor,
                  batch: int = 256) -> dict[str, list[torch.Tensor]]:
    """For each group, its units' outputs as [observations, units] (one matrix per source)."""
    modules = dict(model.named_modules())
    wanted = {name for g in spec for name, _ in g.sources}
    caught: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    hooks = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: caught[name].append(output.detach()))
        for name in wanted]
    model.load_state_dict(state)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch):
                model(inputs[start:start + batch])
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for group in spec:
        out[group.name] = [torch.cat([o.movedim(dim, -1).reshape(-1, group.size) for o in caught[name]]).double()
                           for name, dim in group.sources]
    return out


def activation_matching(model: torch.nn.Module, spec: Spec, a: StateDict, b: StateDict,
                        data: Mapping[str, object] | None, options: AlignOptions) -> Matching:
    """Each group's permutation maximises the summed correlation of ``a``'s and permuted
    ``b``'s unit outputs (every spatial position and token counts as an observation). The
    networks are run unpermuted, so the groups are independent: one linear assignment each."""
    from scipy.optimize import linear_sum_assignment

    missing = [g.name for g in spec if not g.sources]
    if missing:
        raise LayerLMCError(f"activation matching cannot match group '{missing[0]}' (no module "
                            "output carries its units, e.g. attention heads); use --align weight")
    inputs = _examples(data, options).cpu()
    # a copy on the CPU: the evaluator may hold the model itself, on its device
    model = copy.deepcopy(model).cpu()
    acts_a = _unit_outputs(model, a, spec, inputs)
    acts_b = _unit_outputs(model, b, spec, inputs)
    perms = {}
    for group in spec:
        corr = torch.zeros(group.size, group.size, dtype=torch.float64)
        for x, y in zip(acts_a[group.name], acts_b[group.name]):
            x = (x - x.mean(0)) / (x.std(0) + 1e-8)
            y = (y - y.mean(0)) / (y.std(0) + 1e-8)
            corr += x.T @ y / len(x)
        _, cols = linear_sum_assignment(corr.numpy(), maximize=True)
        perms[group.name] = torch.as_tensor(cols, dtype=torch.long)
    return Matching(perms, "activation", 1, True, options.align_seed)


def align_pair(model: torch.nn.Module, a: StateDict, b: StateDict,
               data: Mapping[str, object] | None = None, options: AlignOptions = AlignOptions(),
               spec: Spec | None = None) -> tuple[StateDict, Matching | None]:
    """``b`` with its hidden units permuted onto ``a``'s, and the matching (None for ``none``).

    The spec is the model's (:func:`~layerlmc.core.permutations.permutation_spec`); both
    checkpoints must fit it. The permuted ``b`` computes the same function as ``b``.
    """
    check_method(options.align)
    if options.align == "none":
        return dict(b), None
    spec = permutation_spec(model) if spec is None else spec
    check_spec(spec, a)
    check_spec(spec, b)
    if options.align == "weight":
        matching = weight_matching(spec, a, b, seed=options.align_seed, max_rounds=options.align_rounds)
    else:
        matching = activation_matching(model, spec, a, b, data, options)
    if not matching.converged:
        log.warning("weight matching stopped after %d rounds without converging (align_rounds); "
                    "the run's alignment.json says so", matching.rounds)
    return apply_permutation(b, spec, matching.perms), matching


def matching_summary(matching: Matching, step: int | None = None) -> dict[str, object]:
    """How a matching ended, for ``alignment.json``."""
    return {"step": step, "method": matching.method, "seed": matching.seed,
            "rounds": matching.rounds, "converged": matching.converged,
            "groups": {name: len(p) for name, p in matching.perms.items()}}


def save_matching(folder: str | Path, matching: Matching, name: str = "permutations.safetensors") -> Path:
    """The permutations as int64 tensors keyed by group name (``b`` unit ``perm[i]`` goes to
    position ``i``)."""
    return save_state_dict({k: v.to(torch.int64) for k, v in matching.perms.items()}, Path(folder) / name)


def write_alignment(folder: str | Path, summaries: list[dict[str, object]]) -> Path:
    """``alignment.json``: one :func:`matching_summary` per aligned pair (``converged: false``
    where the search stopped at ``align_rounds``)."""
    path = Path(folder) / "alignment.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summaries, indent=1) + "\n")
    tmp.replace(path)
    return path


class StepAligner:
    """Aligns each step's ``b`` of an analysis over steps, and saves what it used.

    ``final`` (the last step's ``(a, b)``) is matched once when ``align_to`` is ``final``;
    otherwise every step is matched on its own. Each step's permutations go to
    ``permutations/<unit>_NNNN.safetensors`` in ``run``'s folder (``permutations.safetensors``
    for one pair), and every summary to ``alignment.json``.
    """

    def __init__(self, model: torch.nn.Module, data: Mapping[str, object] | None,
                 options: AlignOptions, run=None, final: tuple[StateDict, StateDict] | None = None):
        check_method(options.align)
        if options.align_to not in ALIGN_TO:
            raise unknown("--align-to", options.align_to, ALIGN_TO)
        self.model, self.data, self.options, self.run = model, data, options, run
        self.summaries: list[dict[str, object]] = []
        self.fixed: Matching | None = None
        self.spec: Spec | None = None
        if options.align != "none":
            self.spec = permutation_spec(model)
            if options.align_to == "final" and final is not None:
                _, self.fixed = align_pair(model, final[0], final[1], data, options, self.spec)

    @property
    def active(self) -> bool:
        return self.spec is not None

    def __call__(self, step: int | None, a: StateDict, b: StateDict, unit: str | None,
                 *also: StateDict) -> tuple[StateDict, ...]:
        """``b`` (and the states in ``also``, with the same permutation) aligned for ``step``."""
        if self.spec is None:
            return (b, *also)
        if self.fixed is not None:
            matching = self.fixed
            check_spec(self.spec, b)
        else:
            _, matching = align_pair(self.model, a, b, self.data, self.options, self.spec)
        if self.run is not None:
            name = "permutations.safetensors" if step is None else f"permutations/{unit}_{step:04d}.safetensors"
            save_matching(self.run.path, matching, name)
            summary = {**matching_summary(matching, step), "to": self.options.align_to if step is not None else None}
            self.summaries = [s for s in self.summaries if s["step"] != step] + [summary]
            write_alignment(self.run.path, self.summaries)
        return tuple(apply_permutation(s, self.spec, matching.perms) for s in (b, *also))
