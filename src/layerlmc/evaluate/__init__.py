"""Evaluators: the loss and accuracy of one network state on preloaded splits."""

from .batchnorm import BN_POLICIES, batchnorm_modules, statistics_keys
from .data import Split, prepare_splits, resolve_device, statistics_batches
from .plain import Evaluator, Metrics

__all__ = ["BN_POLICIES", "Evaluator", "Metrics", "Split", "batchnorm_modules", "prepare_splits",
           "resolve_device", "statistics_batches", "statistics_keys"]
