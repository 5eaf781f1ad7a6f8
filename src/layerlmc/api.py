"""The public studies: each runs its analysis, then draws its figures from the records.

Analyses (:mod:`layerlmc.analyses`) compute records and never draw; plots
(:mod:`layerlmc.plots`) read records and never compute. A user who wants both in one call, as
the paper's figures come, calls these: ``layerlmc.barriers``, ``trajectory``, ``robustness``,
``subspace``, ``federate`` and ``deep_linear_study`` take every argument of their analysis plus
``plots`` (default ``True``: with an ``out`` folder, the figures go to ``out/figures``; a
federated run's to ``FOLDER/multimodel/figures``). The figures are drawn once the analysis has
marked its run complete; one that cannot be written marks it ``failed`` again, and a rerun
draws them from the stored records.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from .analyses import multimodel, pairwise
from .analyses.robustness import robustness as robustness_analysis
from .analyses.subspace import subspace as subspace_analysis
from .analyses.theory.deep_linear import deep_linear_study as deep_linear_analysis
from .analyses.trajectory import trajectory as trajectory_analysis
from .config import FederatedConfig
from .core.checkpoints import StateDict, check_pair, load_state_dict, reorder_like, save_state_dict
from .core.permutations import Matching
from .core.records import RunDir
from .evaluate.alignment import AlignOptions, align_pair, matching_summary, save_matching
from .train import federated

Draw = Callable[[object, Path, Mapping[str, object]], object]


def with_figures(analysis: Callable, draw: Draw) -> Callable:
    """``analysis`` with a keyword ``plots``: after it returns, ``draw(result, out, arguments)``
    draws the figures of its run folder ``out`` (when it has one); ``arguments`` are the
    analysis's, with its option objects resolved (:func:`~layerlmc.core.options.flat_options`)."""
    signature = inspect.signature(analysis)
    resolve = getattr(analysis, "resolve", None) or signature.bind

    @functools.wraps(analysis)
    def study(*args, plots: bool = True, **kwargs):
        result = analysis(*args, **kwargs)
        arguments = resolve(*args, **kwargs)
        arguments.apply_defaults()
        out = arguments.arguments.get("out")
        if plots and out is not None:
            # a figure that cannot be written leaves the run short of complete, as a record would
            with RunDir(out).status_on_error():
                draw(result, Path(out), arguments.arguments)
        return result

    study.__dict__.pop("resolve", None)  # the analysis's, copied by wraps: it knows no plots=
    plots = inspect.Parameter("plots", inspect.Parameter.KEYWORD_ONLY, default=True)
    parameters = list(signature.parameters.values())
    where = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
    study.__signature__ = signature.replace(parameters=[*parameters[:where], plots, *parameters[where:]])
    return study


def _draw_barriers(table: pd.DataFrame, out: Path, arguments: Mapping) -> None:
    from .plots.barriers import plot_run

    run = RunDir(out)
    plot_run(pd.DataFrame(run.read_points(repair=False)), table, run.figures)


def _draw_trajectory(result: tuple[pd.DataFrame, pd.DataFrame], out: Path, arguments: Mapping) -> None:
    from .plots.trajectory import plot_trajectory

    table, distances = result
    paths = arguments["paths"]
    plot_trajectory(table, distances, out / "figures", paths.definition, paths.reference)


def _draw_robustness(table: pd.DataFrame, out: Path, arguments: Mapping) -> None:
    from .plots.robustness import plot_robustness

    plot_robustness(table, out / "figures", at=arguments["at"])


def _draw_subspace(table: pd.DataFrame, out: Path, arguments: Mapping) -> None:
    from .plots.subspace import plot_subspace

    plot_subspace(table, out / "figures")


def _draw_deep_linear(result: tuple[pd.DataFrame, pd.DataFrame], out: Path, arguments: Mapping) -> None:
    from .plots.theory import plot_cuts

    curves, report = result
    title = (f"deep linear network, depth {arguments['depth']}, width {arguments['width']}, "
             f"{arguments['loss']} loss, seed {arguments['seed']}")
    plot_cuts(curves, report, out / "figures" / "deep_linear_cuts", title=title)


barriers = with_figures(pairwise.barriers, _draw_barriers)
trajectory = with_figures(trajectory_analysis, _draw_trajectory)
robustness = with_figures(robustness_analysis, _draw_robustness)
subspace = with_figures(subspace_analysis, _draw_subspace)
deep_linear_study = with_figures(deep_linear_analysis, _draw_deep_linear)


def federate(config: FederatedConfig, out: str | Path | None = None, progress: bool | None = None,
             *, plots: bool = True) -> Path:
    """Simulate ``config`` (:func:`layerlmc.train.federated.federate`), then, when
    ``config.multimodel.enabled``, measure the barriers of the K-client average into
    ``FOLDER/multimodel`` (:func:`layerlmc.analyses.multimodel.analyse_federated_run`) and draw
    them. Returns the run folder."""
    folder = federated.federate(config, out, progress=progress)
    if config.multimodel.enabled:
        table = multimodel.analyse_federated_run(folder, progress=progress)
        if plots:
            from .plots.trajectory import plot_multimodel

            with RunDir(folder / "multimodel").status_on_error():
                plot_multimodel(table, folder / "multimodel" / "figures")
    return folder


def align(model, a: StateDict | str | Path, b: StateDict | str | Path, *, method: str = "weight",
          data: Mapping[str, object] | None = None, out: str | Path | None = None, seed: int = 0,
          max_rounds: int = 100, split: str = "train",
          examples: int = 1000) -> tuple[StateDict, Matching]:
    """``b`` with its hidden units permuted onto ``a``'s, and the matching (its ``perms``: group
    name → permutation, ``rounds``, ``converged``).

    ``method``: ``weight`` (weight matching, seeded coordinate descent of at most
    ``max_rounds`` rounds) or ``activation`` (correlations of unit outputs on ``examples``
    examples of ``data[split]``). The permuted ``b`` computes what ``b`` computes. With
    ``out`` (a ``.safetensors`` file), it is saved there, the permutations beside it as
    ``NAME.permutations.safetensors`` and the summary as ``NAME.alignment.json``.
    """
    import json

    state_a = load_state_dict(a) if isinstance(a, (str, Path)) else dict(a)
    state_b = load_state_dict(b) if isinstance(b, (str, Path)) else dict(b)
    expected = model.state_dict()
    check_pair(state_a, state_b, expected)
    state_a, state_b = reorder_like(state_a, expected), reorder_like(state_b, expected)
    options = AlignOptions(align=method, align_seed=seed, align_rounds=max_rounds,
                           align_split=split, align_examples=examples)
    if method == "none":
        from .errors import LayerLMCError

        raise LayerLMCError("align: choose a method, weight or activation")
    aligned, matching = align_pair(model, state_a, state_b, data, options)
    if out is not None:
        out = Path(out)
        stem = out.name.removesuffix(out.suffix)
        save_state_dict(aligned, out)
        save_matching(out.parent, matching, f"{stem}.permutations.safetensors")
        (out.parent / f"{stem}.alignment.json").write_text(json.dumps(matching_summary(matching), indent=1) + "\n")
    return aligned, matching


def report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report page of a run folder from its records alone (default
    ``folder/report.html``) and return its path; see :mod:`layerlmc.plots.report`."""
    from .plots.report import write_report

    return write_report(folder, out)


__all__ = ["align", "barriers", "deep_linear_study", "federate", "report", "robustness", "subspace",
           "trajectory", "with_figures"]
