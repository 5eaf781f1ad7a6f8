"""Evaluators: the loss and accuracy of one network state on preloaded splits."""

from .data import Split, prepare_splits, resolve_device
from .plain import Evaluator, Metrics

__all__ = ["Evaluator", "Metrics", "Split", "prepare_splits", "resolve_device"]
