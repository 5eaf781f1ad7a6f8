"""Learning rates as pure functions of (epoch, iteration): nothing to save, nothing to drift on resume."""

from __future__ import annotations

import math

from ..config import ScheduleConfig


def learning_rate(schedule: ScheduleConfig, base_lr: float, iteration: int, epochs: int, iters_per_epoch: int) -> float:
    """The learning rate of global ``iteration`` (0-based) of a run of ``epochs`` epochs."""
    epoch = iteration // iters_per_epoch
    total = epochs * iters_per_epoch
    name = schedule.name
    if name == "constant":
        return base_lr
    if name in ("cosine", "warmup-cosine"):
        # stepped per epoch, as torch's CosineAnnealingLR(T_max=epochs) stepped each epoch
        lr = schedule.min_lr + (base_lr - schedule.min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2
        if name == "warmup-cosine" and iteration < schedule.warmup_iters:
            start = schedule.warmup_start_lr
            return start + (lr - start) * iteration / schedule.warmup_iters
        return lr
    if name == "step":
        return base_lr * schedule.gamma ** (epoch // schedule.step_size)
    if name == "multistep":
        milestones = schedule.milestones
        # fractions of the run ([0.5, 0.75], [0.5, 1.0]) unless every milestone is a whole epoch
        if milestones and all(m <= 1 for m in milestones) and any(m != int(m) for m in milestones):
            milestones = [round(m * epochs) for m in milestones]
        return base_lr * schedule.gamma ** sum(epoch >= m for m in milestones)
    if name == "onecycle":
        start = base_lr / schedule.div_factor
        end = start / schedule.final_div_factor
        peak_at = max(1, int(schedule.pct_start * total))
        if iteration < peak_at:
            return _cosine(start, base_lr, iteration / peak_at)
        return _cosine(base_lr, end, min(1.0, (iteration - peak_at) / max(1, total - 1 - peak_at)))
    raise ValueError(f"unknown schedule {name}")


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2
