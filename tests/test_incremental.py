"""The incremental, vectorised and automatic evaluators give the plain evaluator's numbers."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch
from torch import nn

from layerlmc.cli.main import main
from layerlmc.core.plan import plan_paths
from layerlmc.evaluate import (
    IncrementalEvaluator,
    Job,
    VectorizedEvaluator,
    make_evaluator,
    points,
    prepare_splits,
)
from layerlmc.evaluate.options import build_evaluator
from layerlmc.evaluate.points import evaluate_paths
from layerlmc.registry import models

from .test_zoo import TEST_KWARGS, built, example_data, image_kwargs

#: zoo models whose forward checks its inputs in Python, which torch.fx cannot trace
UNTRACEABLE = {"char-gpt", "vit"}
IDENTITY = ("kind", "group", "base", "order", "alpha", "split")


def sweep(name: str, kinds: tuple[str, ...], batch_size: int = 4) -> dict[str, list[dict]]:
    """Records of endpoints, the full path, every group with base a and b, and cumulative
    paths, for each evaluator kind."""
    extra = image_kwargs(name)
    a, b = built(name, 0, **extra), built(name, 1, **extra)
    data = example_data(models.get(name), {**TEST_KWARGS.get(name, {}), **extra})
    state_a, state_b = a.state_dict(), b.state_dict()
    # α=0 with base b changes the group to a's; α=½ blends it
    paths = plan_paths(state_a, a, cumulative=["deep"], alphas="0,0.5,1", layer_alphas="0,0.5")
    out = {}
    for kind in kinds:
        evaluator = build_evaluator(a, data, state_a, splits=None, max_examples=None, seed=0, batch_size=batch_size, device="cpu", evaluator=kind)
        if kind == "incremental":
            assert evaluator.incremental == (name not in UNTRACEABLE)
        out[kind] = evaluate_paths(evaluator, state_a, state_b, paths, progress=False)
    return out


def assert_same(records: list[dict], expected: list[dict], rel: float = 1e-6) -> None:
    assert [tuple(r[k] for k in IDENTITY) for r in records] == \
        [tuple(r[k] for k in IDENTITY) for r in expected]
    for got, want in zip(records, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=rel, abs=1e-9), got
        assert got["accuracy"] == want["accuracy"] and got["n"] == want["n"]


@pytest.mark.parametrize("name", [entry.name for entry in models.entries()])
def test_incremental_equals_plain_on_the_zoo(name):
    found = sweep(name, ("plain", "incremental"))
    assert_same(found["incremental"], found["plain"])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_vmap_and_auto_equal_plain(name):
    found = sweep(name, ("plain", "vmap", "auto"), batch_size=5)
    assert_same(found["vmap"], found["plain"])
    assert_same(found["auto"], found["plain"])


class Branchy(nn.Module):
    """Residual additions in place and in-place ReLUs: the cache must not be changed by them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 6)
        self.skip = nn.Linear(6, 6)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        out = self.fc2(h)
        out += self.skip(h)
        out = torch.relu_(out)
        return self.head(out)


class Checky(Branchy):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return super().forward(x)


def _pair(cls: type[nn.Module]) -> tuple[nn.Module, dict, dict, dict]:
    torch.manual_seed(0)
    a, b = cls(), cls()
    g = torch.Generator().manual_seed(1)
    data = {"train": (torch.randn(23, 5, generator=g), torch.randint(0, 3, (23,), generator=g)),
            "test": (torch.randn(11, 5, generator=g), torch.randint(0, 3, (11,), generator=g))}
    return a, a.state_dict(), b.state_dict(), data


def test_in_place_operations_do_not_corrupt_the_cache():
    model, a, b, data = _pair(Branchy)
    paths = plan_paths(a, model, cumulative=["deep"], layer_alphas="0.5,1")
    found = {kind: evaluate_paths(build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=4, device="cpu", evaluator=kind), a, b, paths, progress=False)
             for kind in ("plain", "incremental")}
    assert_same(found["incremental"], found["plain"])


def test_only_the_dependent_nodes_rerun():
    model, a, _b, data = _pair(Branchy)
    evaluator = IncrementalEvaluator(model, prepare_splits(data))
    evaluator.check(a)

    def rerun(*keys: str) -> list[str]:
        plan = evaluator._plan(frozenset(keys))
        return [getattr(evaluator.nodes[i].target, "__name__", evaluator.nodes[i].target)
                for i in plan.nodes]

    assert rerun("head.weight") == ["head", "output"]
    assert rerun("skip.bias") == ["skip", "add", "relu_", "head", "output"]
    assert rerun("fc1.weight")[:2] == ["fc1", "act"] and len(rerun("fc1.weight")) == 8
    assert rerun() == []


def test_an_untraceable_model_falls_back_with_one_notice(caplog):
    model, a, b, data = _pair(Checky)
    paths = plan_paths(a, model, layer_alphas="0.5")
    with caplog.at_level(logging.INFO, logger="layerlmc"):
        evaluator = build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=4, device="cpu", evaluator="incremental")
        records = evaluate_paths(evaluator, a, b, paths, progress=False)
    notices = [r for r in caplog.records if "cannot be traced" in r.getMessage()]
    assert len(notices) == 1 and not evaluator.incremental
    plain = evaluate_paths(build_evaluator(model, data, a, splits=None, max_examples=None, seed=0, batch_size=4, device="cpu"), a, b, paths,
                           progress=False)
    assert_same(records, plain, rel=0)


def test_small_chunks_and_keep_base_give_the_same_records(monkeypatch):
    name = "resnet20"
    extra = image_kwargs(name)
    a, b = built(name, 0, **extra), built(name, 1, **extra)
    data = example_data(models.get(name), {**TEST_KWARGS.get(name, {}), **extra})
    state_a, state_b = a.state_dict(), b.state_dict()
    paths = plan_paths(state_a, a, cumulative=["shallow"], alphas="0,0.5,1")
    monkeypatch.setattr(points, "CHUNK_POINTS", 3)
    for bn in ("keep-base", "interpolate"):
        found = {kind: evaluate_paths(build_evaluator(a, data, state_a, splits=None, max_examples=None, seed=0, batch_size=4, device="cpu", bn=bn, evaluator=kind),
                                      state_a, state_b, paths, progress=False)
                 for kind in ("plain", "incremental")}
        assert_same(found["incremental"], found["plain"])


def test_recompute_takes_the_plain_path(caplog):
    name = "resnet20"
    extra = image_kwargs(name)
    a = built(name, 0, **extra)
    data = example_data(models.get(name), {**TEST_KWARGS.get(name, {}), **extra})
    with caplog.at_level(logging.INFO, logger="layerlmc"):
        evaluator = build_evaluator(a, {**data, "train": data["test"]}, a.state_dict(), splits=None, max_examples=None, seed=0, batch_size=4, device="cpu", bn="recompute", bn_batches=1, evaluator="incremental")
    assert not evaluator.incremental
    assert any("--bn recompute" in r.getMessage() for r in caplog.records)


def test_vmap_runs_chunks_and_jobs_without_a_base():
    model, a, b, data = _pair(Branchy)
    splits = prepare_splits(data)
    plain = make_evaluator("plain", model, splits, 4)
    vectorized = make_evaluator("vmap", model, splits, 4, chunk=2)
    assert isinstance(vectorized, VectorizedEvaluator)
    states = [{k: torch.lerp(a[k], b[k], t) for k in a} for t in (0.0, 0.3, 0.6, 1.0, 0.9)]
    jobs = [Job(state) for state in states]
    for got, want in zip(vectorized.evaluate_many(jobs, "test"), plain.evaluate_many(jobs, "test")):
        assert got.loss == pytest.approx(want.loss, rel=1e-6)
        assert got.accuracy == want.accuracy and got.n == want.n


def test_cli_evaluator_gives_the_same_barriers(user_files):
    f = user_files
    tables = {}
    for kind in ("plain", "incremental", "auto"):
        out = f["dir"] / f"run_{kind}"
        assert main(["barriers", str(f["a"]), str(f["b"]), "--model", f"{f['model']}:make_net",
                     "--data", f"{f['data']}:make_splits", "--out", str(out), "--batch-size", "8",
                     "--cumulative", "deep", "--no-plots", "--evaluator", kind]) == 0
        tables[kind] = pd.read_csv(out / "barriers.csv")
        assert f"evaluator: {kind}" in (out / "config.yaml").read_text()
    for kind in ("incremental", "auto"):
        pd.testing.assert_frame_equal(tables[kind], tables["plain"], rtol=1e-6, atol=1e-9)
    # the evaluator is a setting, not an input: a folder may be continued with another one
    assert main(["barriers", str(f["a"]), str(f["b"]), "--model", f"{f['model']}:make_net",
                 "--data", f"{f['data']}:make_splits", "--out", str(f["dir"] / "run_plain"),
                 "--batch-size", "8", "--cumulative", "deep", "--no-plots",
                 "--evaluator", "incremental"]) == 0
