"""Which paths a barrier study needs: :class:`PathOptions` and :func:`plan_paths`.

The plan is made once per study from the first state's keys and the options; it is pure (no
evaluation), so every step of a trajectory and every worker of an executor walks the same paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .barriers import check_choices, needed_alphas
from .checkpoints import StateDict
from .groups import layer_groups, select_groups, tied_keys
from .options import flat_options
from .paths import Path, cumulative_paths, full_path, group_paths, parse_alphas

#: the full path's grid of a study of one pair: its curve is drawn
FULL_ALPHAS = "0:1:11"


@dataclass(frozen=True)
class PathOptions:
    """Which paths a study walks and which barriers it reports.

    ``groups``/``patterns``: how state-dict keys form layer groups (:func:`layer_groups`);
    ``layers``: the groups that get single-group paths (default all; ``layerwise=False``: none);
    ``bases``: the endpoints the other groups come from; ``cumulative``: orders of cumulative
    paths (``shallow``, ``deep``, ``random``, ``minimal``, ``window:K`` or a list of groups;
    ``seed`` seeds ``random``); ``alphas``: the full path's grid (default: the analysis's own,
    :data:`FULL_ALPHAS` for one pair, α = 0, ½, 1 at every step of a trajectory, where the
    full path is only one of many); ``layer_alphas``: the grid of
    group and cumulative paths (default: what the definitions need); ``definitions``
    (``midpoint``, ``max``) and ``references`` (``models``, ``path``, ``models-swap``): the
    barriers reported (``max`` of group and cumulative paths uses ``path`` for ``models``; see
    :func:`~layerlmc.core.barriers.row_reference`);
    ``extrapolate``: allow α outside [0, 1].
    """

    groups: str = "module"
    patterns: Sequence[str] = ()
    layers: Sequence[str] | None = None
    layerwise: bool = True
    bases: Sequence[str] = ("a", "b")
    cumulative: Sequence[str] = ()
    alphas: str | Sequence[float] | None = None
    layer_alphas: str | Sequence[float] | None = None
    definitions: Sequence[str] = ("midpoint",)
    references: Sequence[str] = ("models",)
    seed: int = 0
    extrapolate: bool = False

    def with_alphas(self, default: str | Sequence[float]) -> PathOptions:
        """These options with the full path's grid ``default`` unless one was chosen."""
        return self if self.alphas is not None else dataclasses.replace(self, alphas=default)

    @property
    def definition(self) -> str:
        """The first definition: the one figures and summaries show."""
        return as_list(self.definitions)[0]

    @property
    def reference(self) -> str:
        return as_list(self.references)[0]


@flat_options
def plan_paths(state: StateDict, model: torch.nn.Module | None = None, *,
               paths: PathOptions = PathOptions()) -> list[Path]:
    """The paths a barrier study needs, each with only the α values some output uses.

    The full path gets the ``alphas`` grid (its curve is plotted); group and cumulative paths
    get ``layer_alphas`` (default: only what the barrier definitions need, i.e. α=½ for
    ``midpoint``; the ``alphas`` grid for ``max``) plus α=0 and 1 for the ``path`` reference.
    """
    paths = paths.with_alphas(FULL_ALPHAS)
    definitions, references = as_list(paths.definitions), as_list(paths.references)
    bases, layers = as_list(paths.bases), as_list(paths.layers) or None
    cumulative = paths.cumulative
    cumulative = list(dict.fromkeys([cumulative] if isinstance(cumulative, str) else cumulative))
    check_choices(definitions, references)
    tied = tied_keys(model) if model is not None else ()
    # a group of integer tensors only (e.g. num_batches_tracked under --groups param) never moves
    group_list = [
        g for g in layer_groups(state, paths.groups, paths.patterns, tied=tied)
        if any(state[k].is_floating_point() for k in g.keys)
    ]
    float_keys = [k for k, v in state.items() if v.is_floating_point()]
    full_grid = parse_alphas(paths.alphas, paths.extrapolate)
    planned = [full_path(float_keys, _with_needed(full_grid, definitions, references))]
    if paths.layer_alphas is not None:
        layer_grid = parse_alphas(paths.layer_alphas, paths.extrapolate)
    else:
        layer_grid = full_grid if "max" in definitions else ()
    layer_grid = _with_needed(layer_grid, definitions, references)
    if paths.layerwise:
        planned += group_paths(select_groups(group_list, layers), bases, layer_grid)
    for order in cumulative:
        planned += cumulative_paths(group_list, order, bases, layer_grid, seed=paths.seed)
    return planned


def as_list(values: str | Sequence[str] | None) -> list[str]:
    """Options given as a comma-separated string or a sequence, without repeats, in order."""
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(",")
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def _with_needed(grid, definitions, references) -> tuple[float, ...]:
    return tuple(sorted(set(grid) | needed_alphas(definitions, references, grid)))
