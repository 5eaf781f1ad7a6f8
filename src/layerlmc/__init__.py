"""layerlmc: layer-wise linear mode connectivity of PyTorch models.

The public API::

    import layerlmc
    table = layerlmc.barriers(model, "a.safetensors", "b.safetensors", {"test": (x, y)})

What to evaluate and which paths travel as :class:`EvalOptions` and :class:`PathOptions`
(or their fields as keywords); :func:`report` writes a run folder's HTML page. Analyses over training and beyond the a–b line: :func:`trajectory`, :func:`robustness`,
:func:`subspace`; federated simulation: :func:`federate`, :func:`aggregate`, :func:`partition`;
deep linear networks: :func:`deep_linear_study` and ``layerlmc.analyses.theory``.

The layers of the package, from the bottom up (docs/design.md): ``core`` → ``evaluate`` →
``analyses`` → ``train`` → ``plots`` → ``api`` → ``recipes`` → ``cli``.
"""

from . import hf as _hf  # noqa: F401  (registers the Hugging Face folder loader)
from ._compat import install as _install_compat
from ._version import __version__  # noqa: F401
from .api import align, barriers, deep_linear_study, federate, report, robustness, subspace, trajectory
from .core.averaging import aggregate
from .core.barriers import compute_barriers, summary_table
from .core.checkpoints import check_pair, load_state_dict, save_state_dict
from .core.groups import LayerGroup, layer_groups, order_groups
from .core.paths import (
    Path,
    Point,
    cumulative_paths,
    full_path,
    group_paths,
    interpolate,
    parse_alphas,
)
from .core.plan import PathOptions, plan_paths
from .core.records import RunDir
from .data.partition import partition
from .errors import LayerLMCError
from .evaluate import Evaluator, Metrics
from .evaluate.alignment import AlignOptions
from .evaluate.options import EvalOptions
from .evaluate.points import evaluate_paths
from .train import train_runs

# old module paths (``layerlmc.lmc``, ``layerlmc.results``, ...) keep working for one release
_install_compat()

__all__ = [
    "AlignOptions",
    "EvalOptions",
    "Evaluator",
    "LayerGroup",
    "LayerLMCError",
    "Metrics",
    "Path",
    "PathOptions",
    "Point",
    "RunDir",
    "aggregate",
    "align",
    "barriers",
    "check_pair",
    "compute_barriers",
    "deep_linear_study",
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
    "report",
    "robustness",
    "save_state_dict",
    "subspace",
    "summary_table",
    "train_runs",
    "trajectory",
]
