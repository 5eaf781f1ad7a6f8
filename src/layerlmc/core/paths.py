"""Paths θ(α) between two endpoints, produced point by point.

A point never copies the state dict: only the tensors of the interpolated keys are new
(``torch.lerp``), every other entry is the base's own tensor, and the model is evaluated on
that mapping with ``torch.func.functional_call``. A sweep builds its points into one
:class:`Scratch`, memory allocated once and reused point after point, so that it holds ``a``,
``b`` and at most one state's worth of interpolated tensors however many points it evaluates;
for an evaluator that reads a state one module at a time (the incremental one) it hands over
:class:`LazyState` mappings instead, whose interpolated tensors exist only while a module
runs, so that it holds ``a``, ``b`` and one module's worth.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import LayerLMCError
from .groups import ORDERS, LayerGroup, order_groups

KINDS = ("full", "group", "cumulative")
BASES = ("a", "b")


@dataclass(frozen=True)
class Path:
    """One line in parameter space.

    ``keys`` are the interpolated keys: (1−α)·a + α·b; every other key is taken from ``base``
    (``a`` for the full path, whose ``keys`` are all floating keys). ``order`` names the
    cumulative order (``shallow``, ``deep``, ``random:SEED``, ``minimal``, ``window:K``,
    ``list:HASH``) and is None for other kinds.
    """

    kind: str
    group: str
    group_index: int | None
    base: str | None
    order: str | None
    keys: frozenset[str]
    alphas: tuple[float, ...]

    def points(self) -> Iterator[Point]:
        for alpha in self.alphas:
            yield Point(self, alpha)


@dataclass(frozen=True)
class Point:
    path: Path
    alpha: float

    def b_weights(self, float_keys: Sequence[str]) -> tuple[float, ...]:
        """The weight of ``b`` in every floating key: the point's identity.

        Two points with equal weights are the same network (e.g. the full path at α=0 and
        endpoint ``a``), so one evaluation serves both.
        """
        outside = 1.0 if self.path.base == "b" else 0.0
        return tuple(self.alpha if k in self.path.keys else outside for k in float_keys)


def parse_alphas(text: str | Sequence[float], extrapolate: bool = False) -> tuple[float, ...]:
    """``"0,0.5,1"`` (a list) or ``"0:1:11"`` (start:stop:count, both ends included)."""
    if isinstance(text, str):
        text = text.strip()
        try:
            if ":" in text:
                parts = text.split(":")
                if len(parts) != 3:
                    raise ValueError
                start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
                if count < 1:
                    raise ValueError
                if count == 1:
                    values = [start]
                else:
                    values = [start + (stop - start) * i / (count - 1) for i in range(count)]
            else:
                values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise LayerLMCError(
                f"cannot read alpha grid '{text}': give a list like 0,0.5,1 or a range start:stop:count like 0:1:11"
            ) from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise LayerLMCError("the alpha grid is empty")
    if any(not math.isfinite(v) for v in values):
        raise LayerLMCError(f"the alpha grid '{text}' holds a value that is not a finite number")
    values = sorted({round(v, 12) for v in values})
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside and not extrapolate:
        raise LayerLMCError(
            f"alpha {outside[0]:g} is outside [0, 1]; pass --extrapolate to go beyond the endpoints"
        )
    return tuple(values)


def full_path(float_keys: Sequence[str], alphas: Sequence[float]) -> Path:
    return Path("full", "full", None, None, None, frozenset(float_keys), tuple(alphas))


def group_paths(groups: Sequence[LayerGroup], bases: Sequence[str], alphas: Sequence[float]) -> list[Path]:
    """One path per group and base: the group interpolated, the rest kept at the base."""
    _check_bases(bases)
    return [
        Path("group", g.name, g.index, base, None, frozenset(g.keys), tuple(alphas))
        for base in bases
        for g in groups
    ]


def cumulative_paths(
    groups: Sequence[LayerGroup],
    order: str,
    bases: Sequence[str],
    alphas: Sequence[float],
    seed: int = 0,
) -> list[Path]:
    """Paths whose interpolated set grows one group at a time, or slides as a window.

    ``order``: ``shallow``, ``deep``, ``random`` (seeded by ``seed``), ``minimal``,
    ``window:K`` (K consecutive groups, sliding input → output) or a comma-separated list of
    group names. The record of prefix k names the group added k-th (``group``) and its
    position ``k−1`` (``group_index``).
    """
    _check_bases(bases)
    if order.startswith("window:"):
        try:
            width = int(order.split(":", 1)[1])
        except ValueError:
            width = 0
        if not 1 <= width <= len(groups):
            raise LayerLMCError(f"window width in '{order}' must be an integer from 1 to {len(groups)}")
        label = f"window:{width}"
        windows = [list(groups[i : i + width]) for i in range(len(groups) - width + 1)]
        named = [
            (w[0].name if width == 1 else f"{w[0].name}..{w[-1].name}", i, w) for i, w in enumerate(windows)
        ]
    elif order in ORDERS:
        ordered = order_groups(groups, order, seed=seed)
        label = f"random:{seed}" if order == "random" else order
        named = [(g.name, k, ordered[: k + 1]) for k, g in enumerate(ordered)]
    else:
        names = [n.strip() for n in order.split(",") if n.strip()]
        if len(names) == 1 and names[0] not in {g.name for g in groups}:
            order_groups(groups, order)  # raises "unknown cumulative order ... did you mean"
        ordered = order_groups(groups, names)
        label = "list:" + hashlib.sha1(",".join(g.name for g in ordered).encode()).hexdigest()[:8]
        named = [(g.name, k, ordered[: k + 1]) for k, g in enumerate(ordered)]
    return [
        Path("cumulative", name, index, base, label,
             frozenset(key for g in members for key in g.keys), tuple(alphas))
        for base in bases
        for name, index, members in named
    ]


def interpolate(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    point: Point,
    scratch: Scratch | None = None,
) -> dict[str, torch.Tensor]:
    """The state θ(α) of ``point`` as a mapping for ``functional_call``.

    Interpolated keys are tensors ``torch.lerp(a, b, α)`` (exactly ``a`` at α=0 and ``b`` at
    α=1): new ones, or, with ``scratch``, views of its memory written in place (the same
    numbers; they stay valid until the scratch is :meth:`~Scratch.reset`). All other entries
    are the base's tensors themselves, not copies. Integer buffers are never blended: they
    come from the base (``a`` on the full path).
    """
    base = b if point.path.base == "b" else a
    alpha, keys = point.alpha, point.path.keys
    out = {}
    for key, tensor in base.items():
        if key in keys and tensor.is_floating_point():
            if scratch is None:
                out[key] = torch.lerp(a[key], b[key], alpha)
            else:
                out[key] = torch.lerp(a[key], b[key], alpha, out=scratch.take(a[key]))
        else:
            out[key] = tensor
    return out


class LazyState(Mapping):
    """The state θ(α) of a point, as :func:`interpolate` builds it, whose interpolated tensors
    are computed each time they are read (``torch.lerp(a, b, α)``, the same numbers) and held
    by nobody else: a reader that takes one module's tensors at a time holds at most that
    module's worth of new tensors, so a sweep holds ``a``, ``b`` and no state besides them.
    Every other entry is the base's own tensor. Iterating or ``dict(...)`` builds the whole
    state (:func:`materialize`); the incremental evaluator reads it node by node."""

    def __init__(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                 point: Point):
        self._a, self._b, self.alpha = a, b, point.alpha
        self._base = b if point.path.base == "b" else a
        self.keys_interpolated = frozenset(interpolated_keys(point, self._base))

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.keys_interpolated:
            return torch.lerp(self._a[key], self._b[key], self.alpha)
        return self._base[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)

    def __contains__(self, key: object) -> bool:
        return key in self._base

    def sources(self) -> Iterator[torch.Tensor]:
        """Every tensor the state's values are read from (the base's, and ``b``'s or ``a``'s
        for the interpolated keys), without computing any."""
        yield from self._base.values()
        other = self._a if self._base is self._b else self._b
        for key in self.keys_interpolated:
            yield other[key]


def materialize(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``state`` with every tensor computed once: a :class:`LazyState` as a dict, anything
    else itself."""
    return dict(state) if isinstance(state, LazyState) else state


def interpolated_keys(point: Point, state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys :func:`interpolate` builds new tensors for (its scratch use)."""
    return [k for k in point.path.keys if k in state and state[k].is_floating_point()]


class Scratch:
    """Memory for the interpolated tensors of the states alive at one time, allocated once and
    reused: a sweep resets it (:meth:`reset`) between points (or between chunks of points evaluated
    together), and :func:`interpolate` writes each point's tensors into it with
    ``torch.lerp(..., out=)`` instead of allocating them anew.

    One flat buffer per (device, dtype), sized for the largest of the ``cycles`` given (each a
    list of the keys, with repetition, whose tensors are alive together between resets), so
    the sweep holds a, b and at most that much more. Each tensor starts at a 64-byte boundary,
    as a fresh allocation would. A buffer is allocated on the first :meth:`take`; on a CPU its
    pages only count once written. Whoever holds a tensor of the scratch must not keep it past
    the next :meth:`reset`.
    """

    ALIGN = 64  # bytes

    def __init__(self, like: Mapping[str, torch.Tensor], cycles: Iterable[Sequence[str]]):
        self._capacity: dict[tuple, int] = {}
        for keys in cycles:
            need: dict[tuple, int] = {}
            for key in keys:
                tensor = like[key]
                slot = (tensor.device, tensor.dtype)
                need[slot] = need.get(slot, 0) + self._padded(tensor)
            for slot, count in need.items():
                self._capacity[slot] = max(self._capacity.get(slot, 0), count)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._used: dict[tuple, int] = {}

    def _padded(self, tensor: torch.Tensor) -> int:
        step = max(1, self.ALIGN // tensor.element_size())
        return -(-tensor.numel() // step) * step

    @property
    def nbytes(self) -> int:
        """The bytes the scratch reserves (all buffers at full size)."""
        return sum(count * torch.empty((), dtype=dtype).element_size()
                   for (_, dtype), count in self._capacity.items())

    def reset(self) -> None:
        """Every tensor taken so far may now be overwritten."""
        self._used.clear()

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised, contiguous tensor of ``like``'s shape, dtype and device."""
        slot = (like.device, like.dtype)
        start, size = self._used.get(slot, 0), self._padded(like)
        capacity = self._capacity.get(slot, 0)
        if start + size > capacity:
            # a state the cycles did not announce: a tensor of its own, never a silent overlap
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = self._buffers[slot] = torch.empty(capacity, dtype=like.dtype, device=like.device)
        self._used[slot] = start + size
        return buffer[start : start + like.numel()].view(like.shape)


def _check_bases(bases: Sequence[str]) -> None:
    for base in bases:
        if base not in BASES:
            raise LayerLMCError(f"unknown base '{base}': the base is a or b")
