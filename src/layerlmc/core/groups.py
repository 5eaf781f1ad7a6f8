"""Layer groups: which state-dict keys are interpolated together, and in what order.

Schemes (docs/design.md §3):

- ``module`` (default): drop the last dotted component (``layer1.0.conv1.weight`` →
  ``layer1.0.conv1``), so weights, biases and buffers of one module travel together; the paper's
  "logic layers".
- ``block``: the first capture group of a regex (default: everything up to the first numeric
  component, ``layer1.0.conv1.weight`` → ``layer1.0``); keys that do not match fall back to
  ``module``.
- ``param``: one tensor per group.
- ``regex`` / ``glob``: user patterns, one group per pattern (first match wins); keys matching no
  pattern form a last group ``rest``.
- ``all``: one group holding every key.

Groups are ordered by the first appearance of their keys in the state dict (input → output).
Tensors that the model ties together (shared parameters) are always put in one group, since
they cannot be interpolated apart.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import LayerLMCError, did_you_mean, unknown

SCHEMES = ("module", "block", "param", "regex", "glob", "all")
DEFAULT_BLOCK_REGEX = r"^(.*?\.\d+)\."
ORDERS = ("shallow", "deep", "random", "minimal")


@dataclass(frozen=True)
class LayerGroup:
    """A named set of state-dict keys; ``index`` is its position input → output."""

    index: int
    name: str
    keys: tuple[str, ...]

    def numel(self, state: Mapping[str, torch.Tensor]) -> int:
        return sum(state[k].numel() for k in self.keys)


def layer_groups(
    state: Mapping[str, torch.Tensor],
    scheme: str = "module",
    patterns: Sequence[str] = (),
    tied: Iterable[Iterable[str]] = (),
) -> list[LayerGroup]:
    """Split the keys of ``state`` into ordered, disjoint groups covering every key once.

    ``patterns`` are the regexes (``regex``), shell globs (``glob``) or the one block regex
    (``block``); a pattern may be named ``NAME=PATTERN``. ``tied`` lists key sets that must
    share a group.
    """
    if scheme not in SCHEMES:
        raise unknown("layer group scheme", scheme, SCHEMES)
    keys = list(state)
    if scheme == "module":
        names = [_module_name(k) for k in keys]
    elif scheme == "param":
        names = list(keys)
    elif scheme == "all":
        names = ["all"] * len(keys)
    elif scheme == "block":
        if len(patterns) > 1:
            raise LayerLMCError("the block scheme takes one regex with a capture group")
        regex = _compile(patterns[0] if patterns else DEFAULT_BLOCK_REGEX)
        if regex.groups < 1:
            raise LayerLMCError(f"the block regex '{regex.pattern}' needs a capture group, e.g. '^(layer\\d+\\.\\d+)\\.'")
        names = []
        for k in keys:
            match = regex.search(k)
            names.append(match.group(1) if match and match.groups() else _module_name(k))
    else:
        if not patterns:
            raise LayerLMCError(f"the {scheme} scheme needs at least one --pattern")
        named = [_split_named(p) for p in patterns]
        if scheme == "glob":
            # a glob describes the whole key; a regex may match anywhere in it
            matchers = [(n, re.compile(fnmatch.translate(p)).match) for n, p in named]
        else:
            matchers = [(n, _compile(p).search) for n, p in named]
        names = [next((n for n, matches in matchers if matches(k)), "rest") for k in keys]
    names = _merge_tied(keys, names, tied)
    members: dict[str, list[str]] = {}
    for key, name in zip(keys, names):
        members.setdefault(name, []).append(key)
    if scheme in ("regex", "glob") and "rest" in members:
        members["rest"] = members.pop("rest")  # what no pattern matched comes last
    return [LayerGroup(i, name, tuple(ks)) for i, (name, ks) in enumerate(members.items())]


def tied_keys(model: torch.nn.Module) -> list[list[str]]:
    """Key sets whose tensors are one and the same object in ``model`` (tied weights)."""
    by_tensor: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(key)
    return [ks for ks in by_tensor.values() if len(ks) > 1]


def select_groups(groups: Sequence[LayerGroup], names: Sequence[str] | None) -> list[LayerGroup]:
    """The groups named in ``names`` (all when None), in network order."""
    if not names:
        return list(groups)
    by_name = {g.name: g for g in groups}
    for name in names:
        if name not in by_name:
            raise unknown("layer group", name, by_name)
    wanted = set(names)
    return [g for g in groups if g.name in wanted]


def order_groups(groups: Sequence[LayerGroup], order: str | Sequence[str], seed: int = 0) -> list[LayerGroup]:
    """Groups in the order in which a cumulative path adds them.

    ``order`` is ``shallow`` (input → output), ``deep`` (output → input), ``random`` (a seeded
    shuffle), ``minimal`` (first 5 and last 5 groups, then the middle ones, as in the paper's
    code) or an explicit sequence of group names (which may cover only some groups).
    """
    groups = list(groups)
    if isinstance(order, str):
        if order == "shallow":
            return groups
        if order == "deep":
            return groups[::-1]
        if order == "random":
            shuffled = groups[:]
            random.Random(seed).shuffle(shuffled)
            return shuffled
        if order == "minimal":
            ends = groups[:5] + [g for g in groups[-5:] if g not in groups[:5]]
            return ends + [g for g in groups if g not in ends]
        raise LayerLMCError(
            f"unknown cumulative order '{order}'{did_you_mean(order, ORDERS)}; "
            "give one of shallow, deep, random, minimal, window:K or a comma-separated list of groups"
        )
    by_name = {g.name: g for g in groups}
    ordered = []
    for name in order:
        if name not in by_name:
            raise unknown("layer group", name, by_name)
        if by_name[name] in ordered:
            raise LayerLMCError(f"layer group '{name}' appears twice in the cumulative order")
        ordered.append(by_name[name])
    return ordered


def _module_name(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


def _split_named(pattern: str) -> tuple[str, str]:
    name, sep, rest = pattern.partition("=")
    if sep and name and re.fullmatch(r"[\w.\-]+", name):
        return name, rest
    return pattern, pattern


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise LayerLMCError(f"invalid regex '{pattern}': {err}") from None


def _merge_tied(keys: list[str], names: list[str], tied: Iterable[Iterable[str]]) -> list[str]:
    position = {k: i for i, k in enumerate(keys)}
    for tie in tied:
        idx = [position[k] for k in tie if k in position]
        if len(idx) < 2:
            continue
        target = names[min(idx)]
        moved = {names[i] for i in idx} - {target}
        names = [target if n in moved else n for n in names]
    return names
