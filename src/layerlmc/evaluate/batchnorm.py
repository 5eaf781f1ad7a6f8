"""What the running statistics of BatchNorm layers are at an interpolated point (``--bn``).

Interpolating two BatchNorm networks also interpolates their running means and variances, but
the statistics of the interpolated network's activations are not the interpolated statistics
(the variance collapses along the path; Jordan et al., REPAIR, 2023). The policies:

- ``interpolate``: the running statistics are blended with the weights like any floating tensor
  (the paper's code, and the default);
- ``recompute``: for every evaluated state, the statistics are estimated afresh from a fixed,
  seeded set of training batches (a cumulative average, as ``momentum=None``), then used in
  eval mode;
- ``batch-stats``: every evaluation batch is normalised with its own statistics (the BatchNorm
  layers in train mode); the stored statistics are neither used nor changed;
- ``keep-base``: the statistics are not interpolated but taken from the path's base
  (endpoint ``a`` on the full path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import LayerLMCError, did_you_mean

BN_POLICIES = ("interpolate", "recompute", "batch-stats", "keep-base")
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def check_policy(bn: str) -> str:
    if bn not in BN_POLICIES:
        raise LayerLMCError(f"unknown BatchNorm policy '{bn}'{did_you_mean(str(bn), BN_POLICIES)}")
    return bn


def batchnorm_modules(model: torch.nn.Module) -> dict[str, _BatchNorm]:
    """The modules whose running statistics a policy acts on, by name: BatchNorm1d/2d/3d,
    SyncBatchNorm and lazy variants that track running statistics. GroupNorm, LayerNorm and
    InstanceNorm have no statistics of the training set to fix; a BatchNorm layer built with
    ``track_running_stats=False`` already normalises with batch statistics."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
        and module.running_mean is not None
    }


def statistics_keys(modules: Mapping[str, _BatchNorm]) -> frozenset[str]:
    """The state-dict keys of the modules' running statistics (``num_batches_tracked`` too)."""
    keys = set()
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for buffer in STATISTICS:
            if getattr(module, buffer, None) is not None:
                keys.add(prefix + buffer)
    return frozenset(keys)


@contextlib.contextmanager
def batchnorm_mode(
    modules: Mapping[str, _BatchNorm], *, momentum: object = "keep", track: bool = True,
) -> Iterator[None]:
    """The modules in train mode for the body (``momentum``, ``track_running_stats`` set if
    asked), restored afterwards whatever happens: the user's model is lent, not changed."""
    saved = [(m, m.training, m.momentum, m.track_running_stats) for m in modules.values()]
    try:
        for module in modules.values():
            module.training = True
            if momentum != "keep":
                module.momentum = momentum
            module.track_running_stats = track
        yield
    finally:
        for module, training, old_momentum, old_track in saved:
            module.training = training
            module.momentum = old_momentum
            module.track_running_stats = old_track


def fresh_statistics(
    state: Mapping[str, torch.Tensor], modules: Mapping[str, _BatchNorm],
) -> dict[str, torch.Tensor]:
    """``state`` with new, reset statistics tensors (mean 0, variance 1, count 0), as
    ``reset_running_stats`` leaves them; every other entry is the state's own tensor."""
    out = dict(state)
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for buffer, fill in (("running_mean", 0), ("running_var", 1), ("num_batches_tracked", 0)):
            key = prefix + buffer
            if getattr(module, buffer, None) is None:
                continue
            like = state.get(key, getattr(module, buffer))
            out[key] = torch.full_like(like, fill)
    return out


def describe(bn: str, has_batchnorm: bool, *, batches: Sequence[torch.Tensor] = (),
             source: str = "", eval_batch_size: int = 0) -> str:
    """The policy as recorded in a run's inputs: everything about it that changes a number."""
    if not has_batchnorm:
        return "no BatchNorm"
    if bn == "recompute":
        sizes = sorted({int(x.shape[0]) for x in batches})
        size = "/".join(map(str, sizes))
        return f"recompute from {len(batches)} batches of {size} from {source or 'given inputs'}"
    if bn == "batch-stats":
        return f"batch-stats over evaluation batches of {eval_batch_size}"
    return bn
