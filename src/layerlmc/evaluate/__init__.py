"""Evaluators: the loss and accuracy of one network state on preloaded splits."""

from .auto import EVALUATORS, AutoEvaluator, EvaluatorSpec, check_evaluator, make_evaluator
from .batchnorm import BN_POLICIES, batchnorm_modules, statistics_keys
from .data import Split, prepare_splits, resolve_device, statistics_batches
from .incremental import IncrementalEvaluator
from .plain import PRECISIONS, Evaluator, Job, Metrics, check_precision
from .vectorized import VectorizedEvaluator

__all__ = ["BN_POLICIES", "EVALUATORS", "PRECISIONS", "AutoEvaluator", "Evaluator", "EvaluatorSpec", "IncrementalEvaluator", "Job",
           "Metrics", "Split", "VectorizedEvaluator", "batchnorm_modules", "check_evaluator", "check_precision",
           "make_evaluator", "prepare_splits", "resolve_device", "statistics_batches",
           "statistics_keys"]
