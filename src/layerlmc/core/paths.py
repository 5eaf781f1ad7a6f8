"""Paths θ(α) between two endpoints, produced point by point.

A point never copies the state dict: only the tensors of the interpolated keys are new
(``torch.lerp``), every other entry is the base's own tensor, and the model is evaluated on
that mapping with ``torch.func.functional_call``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
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
) -> dict[str, torch.Tensor]:
    """The state θ(α) of ``point`` as a mapping for ``functional_call``.

    Interpolated keys are new tensors ``torch.lerp(a, b, α)`` (exactly ``a`` at α=0 and ``b``
    at α=1); all other entries are the base's tensors themselves, not copies. Integer buffers
    are never blended: they come from the base (``a`` on the full path).
    """
    base = b if point.path.base == "b" else a
    alpha, keys = point.alpha, point.path.keys
    out = {}
    for key, tensor in base.items():
        if key in keys and tensor.is_floating_point():
            out[key] = torch.lerp(a[key], b[key], alpha)
        else:
            out[key] = tensor
    return out


def _check_bases(bases: Sequence[str]) -> None:
    for base in bases:
        if base not in BASES:
            raise LayerLMCError(f"unknown base '{base}': the base is a or b")
