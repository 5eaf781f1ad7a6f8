"""layerlmc: layer-wise linear mode connectivity of PyTorch models.

The public API::

    import layerlmc
    table = layerlmc.barriers(model, "a.safetensors", "b.safetensors", {"test": (x, y)})

Analyses over training and beyond the a–b line: :func:`trajectory`, :func:`robustness`,
:func:`subspace`; federated simulation: :func:`federate`, :func:`aggregate`, :func:`partition`;
deep linear networks: ``layerlmc.theory``.
"""

__version__ = "0.1.0"

from .analyses import robustness, subspace, trajectory  # noqa: E402
from .barriers import compute_barriers, summary_table  # noqa: E402
from .checkpoints import check_pair, load_state_dict, save_state_dict  # noqa: E402
from .data.partition import partition  # noqa: E402
from .errors import LayerLMCError  # noqa: E402
from .evaluate import Evaluator, Metrics  # noqa: E402
from .layers import LayerGroup, layer_groups, order_groups  # noqa: E402
from .lmc import barriers, evaluate_paths, plan_paths  # noqa: E402
from .paths import Path, Point, cumulative_paths, full_path, group_paths, interpolate, parse_alphas  # noqa: E402
from .results import RunDir  # noqa: E402
from .train import train_runs  # noqa: E402
from .train.federated import aggregate, federate  # noqa: E402

__all__ = [
    "Evaluator",
    "LayerGroup",
    "LayerLMCError",
    "Metrics",
    "Path",
    "Point",
    "RunDir",
    "aggregate",
    "barriers",
    "check_pair",
    "compute_barriers",
    "cumulative_paths",
    "evaluate_paths",
    "federate",
    "full_path",
    "group_paths",
    "interpolate",
    "layer_groups",
    "load_state_dict",
    "order_groups",
    "parse_alphas",
    "partition",
    "plan_paths",
    "robustness",
    "save_state_dict",
    "subspace",
    "summary_table",
    "train_runs",
    "trajectory",
]
