"""Training the model pairs that barrier studies need."""

from .runner import checkpoint_path, read_history, train_runs

__all__ = ["checkpoint_path", "read_history", "train_runs"]
