"""``layerlmc reproduce``: the paper's studies at a scale that fits two CPU cores, one module each.

Each recipe trains what it needs (once: a rerun resumes or reuses it), runs its analysis
through :mod:`layerlmc.api` (records, then figures) and returns the table and the folder.
"""

from .align import reproduce_align
from .fig4 import fig4
from .figures import FIGURES, reproduce
from .lm import reproduce_lm, summarize_lm
from .pair import CONFIG, CONFIGS, TrainedPair, train_pair
from .quickstart import quickstart_config, run_quickstart
from .robustness import reproduce_robustness
from .subspace import reproduce_subspace
from .table1 import (
    FEDERATED_CONFIG,
    TABLE1_PARTITIONS,
    TABLE1_STRATEGIES,
    reproduce_table1,
    table1_markdown,
)
from .vit import reproduce_vit

__all__ = [
    "CONFIG", "CONFIGS", "FEDERATED_CONFIG", "FIGURES", "TABLE1_PARTITIONS", "TABLE1_STRATEGIES", "TrainedPair", "fig4",
    "quickstart_config", "reproduce", "reproduce_align", "reproduce_lm", "reproduce_robustness",
    "reproduce_subspace", "reproduce_table1", "reproduce_vit", "run_quickstart", "summarize_lm",
    "table1_markdown", "train_pair",
]
