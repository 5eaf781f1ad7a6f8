"""Where training and federated runs keep their checkpoints: the folder layouts that the
trainers write and the analyses read (docs/training.md, docs/federated.md)."""

from __future__ import annotations

from pathlib import Path

#: the federated run's pseudo-client holding each round's weighted average
AVERAGE = "average"


def checkpoint_path(out: Path, role: str, epoch: int) -> Path:
    """Run ``role``'s weights after ``epoch`` in a training run (epoch 0: the initialization)."""
    return Path(out) / "checkpoints" / role / f"epoch_{epoch:04d}.safetensors"


def optimizer_path(out: Path, role: str, epoch: int) -> Path:
    return Path(out) / "checkpoints" / role / f"optimizer_{epoch:04d}.pt"


def client_name(index: int, clients: int) -> str:
    return f"client_{index:0{max(2, len(str(clients - 1)))}d}"


def round_checkpoint(folder: Path, model: str, round_: int) -> Path:
    """Client (or :data:`AVERAGE`) ``model``'s weights after ``round_`` of a federated run."""
    return Path(folder) / "checkpoints" / model / f"round_{round_:04d}.safetensors"


def optimizers_path(folder: Path, round_: int) -> Path:
    return Path(folder) / "checkpoints" / f"optimizers_{round_:04d}.pt"
