"""Training the model pairs that barrier studies need."""

from .loop import train_epochs

__all__ = ["train_epochs"]
