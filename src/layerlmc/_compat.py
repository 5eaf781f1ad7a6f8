"""The module paths of layerlmc 0.1 before the layered layout, kept importable for one release.

``import layerlmc.lmc`` (and the rest of :data:`MOVED`) gives the module at its new path, with a
:class:`DeprecationWarning` naming it. The names are strings here, never imports, so the
old paths add no edge to the package's import graph. ``layerlmc.barriers`` is not among them:
it is the function :func:`layerlmc.barriers`, and the module it once also named is
:mod:`layerlmc.core.barriers` (CHANGELOG.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "layerlmc.layers": "layerlmc.core.groups",
    "layerlmc.checkpoints": "layerlmc.core.checkpoints",
    "layerlmc.paths": "layerlmc.core.paths",
    "layerlmc.results": "layerlmc.core.records",
    "layerlmc.lmc": "layerlmc.analyses.pairwise",
    "layerlmc.cells": "layerlmc.analyses.cells",
    "layerlmc.executors": "layerlmc.analyses.executors",
    "layerlmc.theory": "layerlmc.analyses.theory",
    "layerlmc.theory.deep_linear": "layerlmc.analyses.theory.deep_linear",
    "layerlmc.theory.toy": "layerlmc.analyses.theory.toy",
    "layerlmc.plots_trajectory": "layerlmc.plots.trajectory",
    "layerlmc.plots_robustness": "layerlmc.plots.robustness",
    "layerlmc.plots_subspace": "layerlmc.plots.subspace",
    "layerlmc.plots_theory": "layerlmc.plots.theory",
    "layerlmc.recipes_lm": "layerlmc.recipes.lm",
    "layerlmc.recipes_vit": "layerlmc.recipes.vit",
    "layerlmc.quickstart": "layerlmc.recipes.quickstart",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        if new is None:
            return None
        warnings.warn(f"{name} is now {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(name, _Alias(new))


def install() -> None:
    # first in line: the submodule of an alias (``layerlmc.theory.toy``) would otherwise be found
    # by the path finder under the new package's folder and loaded a second time, by its old name
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
