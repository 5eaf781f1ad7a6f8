"""A plain SGD loop on preloaded tensors (full training features come with the training issue)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def train_epochs(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
    desc: str = "training",
) -> torch.nn.Module:
    """SGD for ``epochs`` passes; ``seed`` fixes the data order (and nothing else).

    ``on_epoch_end(epoch, model)`` is called after each epoch (1-based), e.g. to save a
    checkpoint.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    for epoch in range(1, epochs + 1):
        model.train()
        permutation = torch.randperm(n, generator=order)
        batches = range(0, n, batch_size)
        # disable=None: a bar on a terminal only, not in logs
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{epochs}", unit="batch", leave=False, disable=None)
        for start in bar:
            index = permutation[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            loss.backward()
            optimizer.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return model.eval()
