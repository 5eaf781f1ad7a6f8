"""Permutation symmetry of a network: which axes of which tensors share one permutation of
hidden units, how to apply permutations to a state dict, and weight matching (git re-basin).

A **spec** is a tuple of :class:`PermutationGroup`: one group per set of hidden units that
must be permuted together (a layer's outputs, and everything its outputs feed: the next
layer's inputs, a norm's parameters and running statistics, the other side of a residual
addition). Each group lists the tensor axes it permutes (:class:`Axis`). An axis may hold
the units in blocks: ``Axis(key, axis, outer, block)`` views the axis as
``(outer, size, block)`` and permutes the middle dimension, which covers a flatten between a
convolution and a linear layer (each channel is ``H·W`` consecutive inputs) and attention heads
permuted as wholes (``qkv`` rows are ``(3, heads, head_dim)``).

Specs come from :func:`permutation_spec`: a hand-written spec registered for the model's class
(:func:`register_spec`, used by the zoo's transformers), else one derived by tracing the model
with torch.fx (:func:`trace_spec`). This module needs only torch and scipy, so it is core.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import LayerLMCError

StateDict = dict[str, torch.Tensor]
Perms = dict[str, torch.Tensor]

#: coordinate descent stops after this many rounds over all groups (and says so)
MAX_ROUNDS = 100


class SpecError(LayerLMCError):
    """No permutation spec could be derived for a model."""


class SpecMismatch(LayerLMCError):
    """A state dict whose shapes do not fit the permutation spec."""


@dataclass(frozen=True)
class Axis:
    """Axis ``axis`` of tensor ``key`` seen as ``(outer, size, block)``; the permutation acts
    on the ``size`` units (``outer = block = 1``: the axis itself)."""

    key: str
    axis: int
    outer: int = 1
    block: int = 1


@dataclass(frozen=True)
class PermutationGroup:
    """``size`` hidden units, permuted by one permutation on every axis of ``axes``."""

    name: str
    size: int
    axes: tuple[Axis, ...]
    #: modules whose outputs carry these units, with the dim that holds them: what activation
    #: matching compares (empty: the group can only be matched by its weights)
    sources: tuple[tuple[str, int], ...] = ()


Spec = tuple[PermutationGroup, ...]


# ----------------------------------------------------------------------------- applying


def permute_axis(tensor: torch.Tensor, where: Axis, perm: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the units of ``where`` reordered: new unit ``i`` is old unit ``perm[i]``."""
    shape = tensor.shape
    size = shape[where.axis] // (where.outer * where.block)
    view = tensor.reshape(*shape[:where.axis], where.outer, size, where.block, *shape[where.axis + 1:])
    return view.index_select(where.axis + 1, perm.to(tensor.device)).reshape(shape)


def apply_permutation(state: Mapping[str, torch.Tensor], spec: Spec, perms: Mapping[str, torch.Tensor]) -> StateDict:
    """A new state dict: ``state`` with each group's permutation applied to all its axes
    (groups without an entry in ``perms`` are left as they are)."""
    out = dict(state)
    for group in spec:
        if group.name not in perms:
            continue
        perm = torch.as_tensor(perms[group.name], dtype=torch.long)
        for where in group.axes:
            out[where.key] = permute_axis(out[where.key], where, perm)
    return out


def invert(perm: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm), dtype=perm.dtype)
    return inverse


def random_permutations(spec: Spec, seed: int) -> Perms:
    generator = torch.Generator().manual_seed(seed)
    return {g.name: torch.randperm(g.size, generator=generator) for g in spec}


def check_spec(spec: Spec, state: Mapping[str, torch.Tensor]) -> None:
    """Every axis of the spec exists in ``state`` with the length the spec expects."""
    for group in spec:
        for where in group.axes:
            if where.key not in state:
                raise SpecMismatch(f"the permutation spec needs tensor '{where.key}' (group "
                                   f"'{group.name}'), which the checkpoint lacks")
            shape = tuple(state[where.key].shape)
            expected = where.outer * group.size * where.block
            if where.axis >= len(shape) or shape[where.axis] != expected:
                raise SpecMismatch(
                    f"tensor '{where.key}' has shape {list(shape)}, but permutation group "
                    f"'{group.name}' needs axis {where.axis} of length {expected} "
                    f"({group.size} units): the checkpoint does not fit the model's spec")


# ----------------------------------------------------------------------------- weight matching


def _units(tensor: torch.Tensor, where: Axis) -> torch.Tensor:
    """The tensor as a matrix [units, everything else] (float64)."""
    shape = tensor.shape
    size = shape[where.axis] // (where.outer * where.block)
    view = tensor.double().reshape(*shape[:where.axis], where.outer, size, where.block, *shape[where.axis + 1:])
    return view.movedim(where.axis + 1, 0).reshape(size, -1)


@dataclass(frozen=True)
class Matching:
    """Permutations of ``b``'s units onto ``a``'s, and how the search ended."""

    perms: Perms
    method: str
    rounds: int
    converged: bool
    seed: int


def weight_matching(spec: Spec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *,
                    seed: int = 0, max_rounds: int = MAX_ROUNDS) -> Matching:
    """Permutations of ``b`` that maximise Σ ⟨a, π(b)⟩ over the spec's tensors: coordinate
    descent, one group at a time in a seeded random order, each step an exact linear
    assignment problem (scipy's ``linear_sum_assignment``), until a round improves nothing or
    ``max_rounds`` rounds have run (``converged=False``)."""
    from scipy.optimize import linear_sum_assignment

    check_spec(spec, a)
    check_spec(spec, b)
    # which groups touch each key, so that the other groups' current permutations can be applied
    touching: dict[str, list[tuple[PermutationGroup, Axis]]] = {}
    for group in spec:
        for where in group.axes:
            touching.setdefault(where.key, []).append((group, where))
    perms = {g.name: torch.arange(g.size) for g in spec}
    rng = np.random.default_rng(seed)
    rounds, converged = 0, not spec
    while not converged and rounds < max_rounds:
        rounds += 1
        improved = False
        for index in rng.permutation(len(spec)):
            group = spec[index]
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for where in group.axes:
                tensor = b[where.key]
                for other, other_where in touching[where.key]:
                    if other_where is not where:
                        tensor = permute_axis(tensor, other_where, perms[other.name])
                cost += _units(a[where.key], where) @ _units(tensor, where).T
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            old = float(cost[torch.arange(group.size), perms[group.name]].sum())
            new = float(cost.numpy()[rows, cols].sum())
            # a relative tolerance: rounding alone must not count as an improvement
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[group.name] = torch.as_tensor(cols, dtype=torch.long)
                improved = True
        converged = not improved
    return Matching(perms, "weight", rounds, converged, seed)


# ----------------------------------------------------------------------------- specs

_SPECS: dict[type, Callable[[nn.Module], Spec]] = {}


def register_spec(cls: type, build: Callable[[nn.Module], Spec]) -> None:
    """Use ``build(model)`` as the permutation spec of instances of ``cls`` (a model torch.fx
    cannot trace, or whose symmetry tracing cannot see, such as attention heads)."""
    _SPECS[cls] = build


def permutation_spec(model: nn.Module) -> Spec:
    """The model's permutation spec: its class's registered one, else :func:`trace_spec`."""
    for cls in type(model).__mro__:
        if cls in _SPECS:
            spec = tuple(_SPECS[cls](model))
            check_spec(spec, model.state_dict())
            return spec
    return trace_spec(model)


_PASS_MODULES = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Dropout,
                 nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.AvgPool1d)
_PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.tanh,
                   torch.sigmoid, torch.nn.functional.silu, torch.nn.functional.dropout,
                   torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                   torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.leaky_relu}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


@dataclass
class _Unit:
    """One traced group while tracing: its axes, and whether something forbids permuting it."""

    name: str
    size: int
    axes: list[Axis]
    sources: list[tuple[str, int]]
    fixed_by: str | None = None


@dataclass(frozen=True)
class _Value:
    """The permuted channel axis of a traced tensor: which group, where the channels are
    (``chan``: dim 1 of a conv map, ``last``: the last dim, ``flat``: dim 1 after flattening a
    conv map, each channel a block of unknown length), and the group id."""

    unit: int
    layout: str


class _Tracer:
    def __init__(self, model: nn.Module):
        self.model = model
        self.units: list[_Unit] = []
        self.parent: list[int] = []

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def new(self, name: str, size: int, axes: list[Axis], dim: int) -> int:
        self.units.append(_Unit(name, size, axes, [(name, dim)]))
        self.parent.append(len(self.parent))
        return len(self.units) - 1

    def fix(self, value: _Value | None, why: str) -> None:
        if value is not None:
            unit = self.units[self.find(value.unit)]
            unit.fixed_by = unit.fixed_by or why

    def merge(self, x: _Value | None, y: _Value | None, why: str) -> _Value | None:
        """The value of ``x + y``: their groups become one, or are fixed when they cannot."""
        if x is None or y is None:
            self.fix(x, why)
            self.fix(y, why)
            return None
        i, j = self.find(x.unit), self.find(y.unit)
        if i == j:
            return x if x.layout == y.layout else None
        if x.layout != y.layout or x.layout == "flat" or self.units[i].size != self.units[j].size:
            self.fix(x, why)
            self.fix(y, why)
            return None
        keep, drop = min(i, j), max(i, j)  # the group produced first names the merged one
        self.units[keep].axes += self.units[drop].axes
        self.units[keep].sources += self.units[drop].sources
        self.units[keep].fixed_by = self.units[keep].fixed_by or self.units[drop].fixed_by
        self.parent[drop] = keep
        return _Value(keep, x.layout)

    def add_axes(self, value: _Value, axes: list[Axis]) -> None:
        self.units[self.find(value.unit)].axes.extend(axes)

    def module(self, target: str, module: nn.Module, value: _Value | None) -> _Value | None:
        weight = f"{target}.weight"
        bias = [Axis(f"{target}.bias", 0)] if getattr(module, "bias", None) is not None else []
        if isinstance(module, nn.Conv2d):
            if value is not None and value.layout != "chan":
                self.fix(value, f"'{target}' (a convolution of a tensor whose channels are not dim 1)")
                value = None
            if module.groups == 1:
                if value is not None:
                    self.add_axes(value, [Axis(weight, 1)])
                return _Value(self.new(target, module.out_channels, [Axis(weight, 0), *bias], 1), "chan")
            if module.groups == module.in_channels == module.out_channels:
                # depthwise: each channel is filtered alone, so its output keeps its input's unit
                if value is not None:
                    self.add_axes(value, [Axis(weight, 0), *bias])
                return value
            self.fix(value, f"'{target}' (a grouped convolution)")
            return None
        if isinstance(module, nn.Linear):
            if value is not None:
                if value.layout == "chan":
                    self.fix(value, f"'{target}' (a linear layer over a conv map's last dim)")
                else:
                    size = self.units[self.find(value.unit)].size
                    block = module.in_features // size
                    if block * size != module.in_features or (value.layout == "last" and block != 1):
                        self.fix(value, f"'{target}' (in_features {module.in_features} do not "
                                        f"match {size} units)")
                    else:
                        self.add_axes(value, [Axis(weight, 1, 1, block)])
            return _Value(self.new(target, module.out_features, [Axis(weight, 0), *bias], -1), "last")
        if isinstance(module, nn.Embedding):
            return _Value(self.new(target, module.embedding_dim, [Axis(weight, 1)], -1), "last")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if value is None:
                return None
            fits = {nn.BatchNorm2d: "chan", nn.GroupNorm: "chan"}.get(type(module), "last")
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                fits = None
            if isinstance(module, nn.GroupNorm) and module.num_groups not in (1, module.num_channels):
                fits = None  # channels may only move within their group
            if value.layout != fits:
                self.fix(value, f"'{target}' ({type(module).__name__})")
                return None
            axes = [Axis(f"{target}.{name}", 0) for name, tensor in
                    [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                    if tensor is not None and tensor.dim() == 1]
            self.add_axes(value, axes)
            return value
        if isinstance(module, _PASS_MODULES):
            return value
        if isinstance(module, nn.Flatten):
            return self.flatten(value, module.start_dim, module.end_dim, target)
        if value is not None or any(True for _ in module.parameters(recurse=False)):
            self.fix(value, f"'{target}' ({type(module).__name__})")
        return None

    def flatten(self, value: _Value | None, start: int, end: int, where: str) -> _Value | None:
        if value is None:
            return None
        if value.layout == "chan" and start == 1 and end == -1:
            return _Value(value.unit, "flat")
        self.fix(value, f"{where} (a flatten)")
        return None


def trace_spec(model: nn.Module) -> Spec:
    """The permutation spec of ``model`` derived from its torch.fx graph.

    Convolutions, linear layers and embeddings start a group of their outputs; norms
    (BatchNorm, LayerNorm, GroupNorm with 1 or C groups) and element-wise activations, pools
    and dropout pass it on; a residual addition merges the groups of its two sides; a flatten
    of a conv map makes each channel a block of the next linear layer's inputs. Anything else
    a group reaches (the output, a reshape, an attention product, a parameter used in the
    graph) forbids permuting it. A model with no permutable group is a :class:`SpecError`
    naming what stopped each group.
    """
    import torch.fx

    name = type(model).__name__
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001  (any failure of tracing means: no derived spec)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"no permutation spec for {name}: torch.fx cannot trace it ({first}) "
                        "and no hand-written spec is registered (core.permutations.register_spec)") from None
    tracer = _Tracer(model)
    values: dict[torch.fx.Node, _Value | None] = {}
    modules = dict(model.named_modules())

    def arg(x):
        return values.get(x) if isinstance(x, torch.fx.Node) else None

    def fix_all(node, why):
        for x in node.all_input_nodes:
            tracer.fix(values.get(x), why)

    for node in graph.nodes:
        if node.op == "placeholder" or node.op == "get_attr":
            values[node] = None
        elif node.op == "call_module":
            values[node] = tracer.module(node.target, modules[node.target], arg(node.args[0]) if node.args else None)
            for x in node.all_input_nodes[1:]:
                tracer.fix(values.get(x), f"'{node.target}' (a second input)")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            first = arg(node.args[0]) if node.args else None
            if node.op == "call_function" and target in (operator.add, torch.add) and len(node.args) == 2:
                left, right = node.args
                if isinstance(right, (int, float)):
                    values[node] = arg(left)
                elif isinstance(left, (int, float)):
                    values[node] = arg(right)
                else:
                    values[node] = tracer.merge(arg(left), arg(right), f"an addition ({node.name})")
            elif (node.op == "call_function" and target in _PASS_FUNCTIONS) or \
                    (node.op == "call_method" and target in _PASS_METHODS):
                values[node] = first
                for x in node.all_input_nodes[1:]:
                    tracer.fix(values.get(x), f"{node.name}")
            elif target is torch.flatten or (node.op == "call_method" and target == "flatten"):
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                values[node] = tracer.flatten(first, start, end, f"'{node.name}'")
            else:
                label = getattr(target, "__name__", str(target))
                fix_all(node, f"'{label}' ({node.name})")
                values[node] = None
        elif node.op == "output":
            fix_all(node, "the output")
    roots = sorted({tracer.find(i) for i in range(len(tracer.units))})
    spec = tuple(PermutationGroup(u.name, u.size, tuple(u.axes), tuple(u.sources))
                 for u in (tracer.units[i] for i in roots) if u.fixed_by is None)
    if not spec:
        reasons = sorted({tracer.units[i].fixed_by for i in roots if tracer.units[i].fixed_by})
        raise SpecError(f"no permutation spec for {name}: no hidden units can be permuted "
                        f"(stopped by {', '.join(reasons) or 'no layer with units'})")
    check_spec(spec, model.state_dict())
    return spec


def spec_table(spec: Spec) -> list[dict[str, object]]:
    """One row per group: its name, units and the tensors it permutes (for listings)."""
    return [{"group": g.name, "units": g.size, "tensors": len(g.axes),
             "axes": ", ".join(f"{w.key}:{w.axis}" + (f"[{w.outer}x·{w.block}]" if w.outer * w.block > 1 else "")
                               for w in g.axes)} for g in spec]


def matching_distance(spec: Spec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Σ ⟨a, b⟩ over the spec's tensors (what weight matching maximises)."""
    keys = {w.key for g in spec for w in g.axes}
    return math.fsum(float((a[k].double() * b[k].double()).sum()) for k in keys)
