"""Turn a user's splits into tensors on the device, once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..errors import LayerLMCError, did_you_mean, unknown

log = logging.getLogger("layerlmc")


@dataclass
class Split:
    """Inputs and integer labels of one split, already on the evaluation device."""

    name: str
    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise LayerLMCError(f"unknown device '{device}': use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LayerLMCError(f"device '{device}' was asked for but CUDA is not available here")
    return resolved


def prepare_splits(
    data: Mapping[str, object],
    splits: list[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Split]:
    """Tensors for each requested split, optionally a fixed seeded subset of ``max_examples``.

    Each split of ``data`` is an ``(inputs, labels)`` pair of tensors (or arrays) or a torch
    ``Dataset`` yielding ``(input, label)`` items, which is read once and stacked.
    """
    if not isinstance(data, Mapping) or not data:
        raise LayerLMCError(
            "the data must be a non-empty dict of splits, e.g. {'train': (x, y), 'test': (x, y)}"
        )
    if max_examples is not None and max_examples < 1:
        raise LayerLMCError(f"--max-examples must be positive, got {max_examples}")
    names = list(splits) if splits else list(data)
    out = {}
    for name in names:
        if name not in data:
            raise unknown("split", name, data)
        inputs, labels = _as_tensors(name, data[name])
        if labels.shape[0] == 0:
            raise LayerLMCError(f"split '{name}' is empty")
        if inputs.shape[0] != labels.shape[0]:
            raise LayerLMCError(
                f"split '{name}' has {inputs.shape[0]} inputs but {labels.shape[0]} labels"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise LayerLMCError(f"split '{name}': labels must be integer class indices, got {labels.dtype}")
        if max_examples is not None and max_examples < labels.shape[0]:
            # the same seed always picks the same examples, whatever else the run does
            generator = torch.Generator().manual_seed(seed)
            index = torch.randperm(labels.shape[0], generator=generator)[:max_examples].sort().values
            inputs, labels = inputs[index], labels[index]
        out[name] = Split(name, inputs.to(device), labels.long().to(device))
    return out


def statistics_batches(
    data: Mapping[str, object],
    split: str = "train",
    batches: int = 10,
    batch_size: int = 1024,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """Input batches to estimate BatchNorm statistics from (``--bn recompute``).

    ``batches`` batches of ``batch_size`` examples of ``split``, drawn without replacement in
    an order fixed by ``seed`` (shuffled, so that a split stored class by class still gives
    mixed batches). A split too small for that many gives as many full batches as it holds
    (one smaller batch when it holds fewer than ``batch_size``): a partial batch would weigh
    as much as a full one in the cumulative average.
    """
    if batches < 1:
        raise LayerLMCError(f"--bn-batches must be positive, got {batches}")
    if batch_size < 1:
        raise LayerLMCError(f"--bn-batch-size must be positive, got {batch_size}")
    if split not in data:
        raise LayerLMCError(
            f"--bn recompute draws its batches from split '{split}', which the data does not have"
            f"{did_you_mean(split, [str(name) for name in data])}; choose one with --bn-split"
        )
    inputs, _ = _as_tensors(split, data[split])
    total = int(inputs.shape[0])
    if total == 0:
        raise LayerLMCError(f"split '{split}' is empty")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    count = min(batches, total // batch_size)
    if count == 0:
        chunks = [order]
    else:
        chunks = list(order[: count * batch_size].split(batch_size))
    if len(chunks) < batches or count == 0:
        log.info("--bn recompute: split '%s' holds %d examples; BatchNorm statistics come from "
                 "%d batch(es) of %d, not %d of %d", split, total, len(chunks),
                 min(batch_size, total), batches, batch_size)
    return [inputs[index.to(inputs.device)].to(device) for index in chunks]


def _as_tensors(name: str, split: object) -> tuple[torch.Tensor, torch.Tensor]:
    is_sequence = hasattr(split, "__getitem__") and hasattr(split, "__len__")
    if isinstance(split, Dataset) or (
        is_sequence and not isinstance(split, (tuple, list, Mapping, torch.Tensor, str, bytes))
        and not hasattr(split, "shape")
    ):
        try:
            items = [split[i] for i in range(len(split))]
            if not items:
                raise LayerLMCError(f"split '{name}' is empty")
            inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
            labels = torch.stack([torch.as_tensor(y) for _, y in items])
        except LayerLMCError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's Dataset failing in any way
            detail = (str(err).strip().splitlines() or [""])[0]
            raise LayerLMCError(
                f"split '{name}': reading its Dataset failed; items must be (input, label) pairs "
                f"of equal shapes ({type(err).__name__}: {detail})"
            ) from None
        return inputs, labels
    if isinstance(split, (tuple, list)) and len(split) == 2:
        try:
            return torch.as_tensor(split[0]), torch.as_tensor(split[1])
        except (TypeError, ValueError, RuntimeError) as err:
            detail = (str(err).strip().splitlines() or [""])[0]
            raise LayerLMCError(f"split '{name}': cannot make tensors of it ({detail})") from None
    raise LayerLMCError(
        f"split '{name}' must be an (inputs, labels) pair or a torch Dataset, got {type(split).__name__}"
    )
