"""Option objects (EvalOptions, PathOptions), their flat keywords, the old module paths and the
folder-loader registry of the layered layout."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import warnings

import pytest
import torch

import layerlmc
from layerlmc import EvalOptions, PathOptions
from layerlmc.analyses import pairwise
from layerlmc.core import checkpoints
from layerlmc.core.options import flat_options, merge_flat
from layerlmc.errors import LayerLMCError
from layerlmc.models import mlp


def _pair():
    torch.manual_seed(0)
    model = mlp(in_features=6, hidden=[5], num_classes=3)
    a = model.state_dict()
    torch.manual_seed(1)
    b = mlp(in_features=6, hidden=[5], num_classes=3).state_dict()
    generator = torch.Generator().manual_seed(2)
    data = {"train": (torch.randn(40, 6, generator=generator), torch.randint(0, 3, (40,), generator=generator)),
            "test": (torch.randn(30, 6, generator=generator), torch.randint(0, 3, (30,), generator=generator))}
    return model, a, b, data


def test_flat_keywords_and_option_objects_give_the_same_records(tmp_path):
    model, a, b, data = _pair()
    flat = layerlmc.barriers(model, a, b, data, cumulative=["shallow"], max_examples=20, seed=3,
                             batch_size=7, out=tmp_path / "flat", plots=False, progress=False)
    objects = layerlmc.barriers(
        model, a, b, data, out=tmp_path / "objects", plots=False, progress=False,
        paths=PathOptions(cumulative=["shallow"], seed=3),
        evaluation=EvalOptions(max_examples=20, seed=3, batch_size=7))
    assert flat.equals(objects)
    assert ((tmp_path / "flat" / "points.jsonl").read_text()
            == (tmp_path / "objects" / "points.jsonl").read_text())
    assert set(flat["kind"]) == {"full", "group", "cumulative"}


def test_a_keyword_overrides_the_field_of_a_given_object():
    model, a, b, data = _pair()
    bound = pairwise.barriers.resolve(model, a, b, data, evaluation=EvalOptions(batch_size=5),
                                      max_examples=10)
    assert bound.arguments["evaluation"] == EvalOptions(batch_size=5, max_examples=10)
    assert bound.arguments["paths"] == PathOptions()


def test_a_shared_field_goes_into_every_object_and_defaults_stay_per_analysis():
    signature = inspect.signature(layerlmc.analyses.trajectory.__wrapped__)
    kwargs = merge_flat("trajectory", signature, {"seed": 7, "bases": ["a"]})
    assert kwargs["paths"].seed == 7 and kwargs["evaluation"].seed == 7
    assert kwargs["paths"].bases == ["a"]
    # the grid is left to the analysis: its own default survives objects and other keywords
    assert kwargs["paths"].alphas is None
    assert PathOptions().with_alphas("0,1").alphas == "0,1"
    assert PathOptions(alphas="0:1:3").with_alphas("0,1").alphas == "0:1:3"


def test_a_trajectory_given_path_options_keeps_its_own_grid(tmp_path):
    model, a, b, data = _pair()
    steps = {}
    for step, state in ((0, a), (1, b)):
        steps[step] = tmp_path / f"a_{step}.pt"
        torch.save(state, steps[step])
    table, _ = layerlmc.trajectory(model, steps, steps, data, tmp_path / "t", plots=False,
                                   paths=PathOptions(layerwise=False), progress=False)
    points = [r for r in layerlmc.RunDir(tmp_path / "t").read_points() if r["kind"] == "full"]
    assert sorted({r["alpha"] for r in points}) == [0.0, 0.5, 1.0]
    assert set(table["kind"]) == {"full"}


def test_an_option_object_given_as_none_is_the_default():
    model, a, _, _ = _pair()
    assert len(layerlmc.plan_paths(a, model, paths=None)) == len(layerlmc.plan_paths(a, model))


def test_an_unknown_keyword_is_a_type_error_naming_it():
    model, a, b, data = _pair()
    with pytest.raises(TypeError, match="barriers\\(\\) got an unexpected keyword argument 'max_example'"):
        layerlmc.barriers(model, a, b, data, max_example=10)


def test_option_objects_are_frozen_and_the_signature_shows_them():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EvalOptions().device = "cuda"
    parameters = inspect.signature(layerlmc.barriers).parameters
    assert {"paths", "evaluation", "plots", "options"} <= set(parameters)
    assert parameters["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_flat_options_on_a_function_of_ones_own():
    @dataclasses.dataclass(frozen=True)
    class Grid:
        size: int = 3

    @flat_options
    def study(x, *, grid: Grid = Grid()):
        return x * grid.size

    assert study(2) == 6 and study(2, size=5) == 10 and study(2, grid=Grid(4)) == 8
    with pytest.raises(TypeError, match="unexpected keyword argument 'sizes'"):
        study(2, sizes=1)


def test_subspace_refuses_evaluation_options_it_does_not_use():
    model, a, b, data = _pair()
    with pytest.raises(LayerLMCError, match="plain evaluator"):
        layerlmc.analyses.subspace(model, a, b, data, evaluator="incremental", sigmas="0,1")


@pytest.mark.parametrize("old, new", [
    ("layerlmc.lmc", "layerlmc.analyses.pairwise"),
    ("layerlmc.results", "layerlmc.core.records"),
    ("layerlmc.layers", "layerlmc.core.groups"),
    ("layerlmc.theory.toy", "layerlmc.analyses.theory.toy"),
    ("layerlmc.plots_robustness", "layerlmc.plots.robustness"),
])
def test_an_old_module_path_is_the_new_module_with_a_deprecation_warning(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    sys.modules.pop(old, None)


def test_layerlmc_barriers_stays_the_function():
    importlib.import_module("layerlmc.core.barriers")
    assert callable(layerlmc.barriers) and not inspect.ismodule(layerlmc.barriers)


def test_folders_are_read_by_the_registered_loader(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    state = {"w": torch.ones(2)}
    monkeypatch.setattr(checkpoints, "FOLDER_LOADERS", {})
    with pytest.raises(LayerLMCError, match="no checkpoint format reads folders"):
        checkpoints.load_state_dict(folder)
    checkpoints.register_folder_loader("ones", lambda path: path.name == "model", lambda path: state)
    assert checkpoints.load_state_dict(folder) is state


def test_the_hugging_face_loader_registers_itself_on_import():
    assert "huggingface" in checkpoints.FOLDER_LOADERS
