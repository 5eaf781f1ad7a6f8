"""The incremental evaluator's sharing across calls (the first-layer memo) and its in-place
activations: the plain evaluator's numbers, bit for bit, with less computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layerlmc.core.plan import plan_paths
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate import IncrementalEvaluator, Job, make_evaluator, prepare_splits
from layerlmc.evaluate.options import build_evaluator
from layerlmc.evaluate.points import evaluate_paths
from layerlmc.models import cnn, mlp

from .test_incremental import assert_same


def _data(shape: tuple[int, ...], n: int = 13) -> dict:
    g = torch.Generator().manual_seed(3)
    return {"train": (torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)),
            "test": (torch.randn(n - 4, *shape, generator=g), torch.randint(0, 10, (n - 4,), generator=g))}


def _sweep(make, data, **options) -> tuple[list[dict], list[dict], IncrementalEvaluator]:
    torch.manual_seed(0)
    model = make()
    a = model.state_dict()
    torch.manual_seed(1)
    b = make().state_dict()
    paths = plan_paths(a, model, cumulative=["deep"], alphas="0.5", layer_alphas="0,0.5")
    found = {}
    evaluators = {}
    for kind in ("plain", "incremental"):
        evaluators[kind] = build_evaluator(model, data, a, splits=None, max_examples=None, seed=0,
                                           batch_size=4, device="cpu", evaluator=kind,
                                           **(options if kind == "incremental" else {}))
        found[kind] = evaluate_paths(evaluators[kind], a, b, paths, progress=False)
    return found["incremental"], found["plain"], evaluators["incremental"]


@pytest.mark.parametrize("make,shape", [(mlp, (1, 28, 28)), (cnn, (1, 28, 28))])
def test_the_first_layer_is_shared_across_bases_and_the_full_path(make, shape):
    got, want, evaluator = _sweep(make, _data(shape))
    assert_same(got, want, rel=0)  # the same operations on the same tensors: bit for bit
    # the group-1 point of base b and the full midpoint read the first layer that the
    # group-1 point of base a computed (or the other way round), batch by batch
    assert evaluator.memo.hits > 0
    assert 0 < evaluator.memo.used <= evaluator.cache_bytes


def test_no_budget_no_memo_and_the_same_numbers():
    got, want, evaluator = _sweep(mlp, _data((1, 28, 28)), cache_mb=0)
    assert_same(got, want, rel=0)
    assert evaluator.memo.hits == 0 and evaluator.memo.used == 0


def test_a_small_budget_keeps_less_and_gives_the_same_numbers():
    data = _data((1, 28, 28), n=37)
    _, _, unbounded = _sweep(mlp, data)
    # room for one copy of the first layer (0.8 MB) and a few entries, not for the others
    got, want, evaluator = _sweep(mlp, data, cache_mb=1)
    assert_same(got, want, rel=0)
    assert 0 < evaluator.memo.used <= evaluator.cache_bytes
    assert evaluator.memo.hits < unbounded.memo.hits


def test_a_negative_budget_is_one_error():
    with pytest.raises(LayerLMCError, match="cache budget"):
        make_evaluator("incremental", mlp(), prepare_splits(_data((1, 28, 28))), 4, cache_mb=-1)


def test_states_rebuilt_in_the_same_tensors_are_told_apart_by_value():
    """A caller may build each state in one scratch state (``torch.lerp(..., out=)``): the
    memo recognises a first layer by its values, never by the tensor object."""
    torch.manual_seed(0)
    model = mlp()
    a = model.state_dict()
    torch.manual_seed(1)
    b = mlp().state_dict()
    splits = prepare_splits(_data((1, 28, 28)))
    incremental = make_evaluator("incremental", model, splits, 4)
    plain = make_evaluator("plain", model, splits, 4)
    first = frozenset({"fc1.weight", "fc1.bias"})
    scratch = {k: v.clone() for k, v in a.items()}
    for alpha in (0.5, 0.25, 0.5, 0.75):
        for key in first:
            torch.lerp(a[key], b[key], alpha, out=scratch[key])
        state = {k: scratch[k] if k in first else a[k] for k in a}
        for split in ("train", "test"):
            got = incremental.evaluate_many([Job(state, a, first)], split)[0]
            want = plain.evaluate(state, split)
            assert (got.loss, got.accuracy, got.n) == (want.loss, want.accuracy, want.n)
    assert incremental.memo.hits > 0  # α=½ came twice: the second time it was read


class Aliasing(nn.Module):
    """Values an in-place activation must not overwrite: a parameter handed on by Dropout
    (eval: the tensor itself), a view, and a value read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.shift = nn.Parameter(torch.randn(6))
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x) + torch.relu(self.drop(self.shift))  # the parameter itself
        v = torch.relu(h.view(h.shape[0], 2, 3)).flatten(1)  # a view of h, which is read again
        h = torch.relu(self.fc2(v)) + h
        return self.head(torch.relu(h))


def test_in_place_activations_never_overwrite_what_others_hold():
    torch.manual_seed(0)
    model = Aliasing()
    a = model.state_dict()
    torch.manual_seed(1)
    b = Aliasing().state_dict()
    data = {"train": (torch.randn(9, 5), torch.randint(0, 3, (9,))),
            "test": (torch.randn(7, 5), torch.randint(0, 3, (7,)))}
    paths = plan_paths(a, model, cumulative=["deep", "shallow"], alphas="0,0.5,1",
                       layer_alphas="0,0.5,1")
    found = {kind: evaluate_paths(build_evaluator(model, data, a, splits=None, max_examples=None,
                                                  seed=0, batch_size=4, device="cpu",
                                                  evaluator=kind), a, b, paths, progress=False)
             for kind in ("plain", "incremental")}
    assert_same(found["incremental"], found["plain"], rel=0)
    assert torch.equal(model.shift, a["shift"]) and torch.equal(a["shift"], model.state_dict()["shift"])


def test_activations_run_in_place_where_nothing_else_reads_their_input():
    model = mlp()
    evaluator = IncrementalEvaluator(model, prepare_splits(_data((1, 28, 28))))
    schedule = evaluator._schedule(range(len(evaluator.nodes)), {evaluator._output}, set(), {},
                                   set(), set())
    donated = [evaluator.nodes[schedule.nodes[p]].target.__name__ for p in schedule.donated]
    assert donated == ["relu", "relu"]


def test_a_second_study_with_the_same_evaluator_makes_room_for_its_own_endpoints():
    """A study over many checkpoints reuses one evaluator: what the earlier endpoints left is
    dropped (oldest first) for the current ones, within the budget."""
    data = prepare_splits(_data((1, 28, 28), n=37))
    torch.manual_seed(0)
    model = mlp()
    states = []
    for seed in range(4):
        torch.manual_seed(seed)
        states.append(mlp().state_dict())
    paths = plan_paths(states[0], model, alphas="0.5", layer_alphas="0.5")
    # a little more than one study's first-layer copies (3 × 0.8 MB) and entries
    incremental = make_evaluator("incremental", model, data, 4, cache_mb=2.6)
    plain = make_evaluator("plain", model, data, 4)
    for a, b in (states[:2], states[2:]):
        before = incremental.memo.hits
        got = evaluate_paths(incremental, a, b, paths, progress=False)
        assert_same(got, evaluate_paths(plain, a, b, paths, progress=False), rel=0)
        assert incremental.memo.hits > before
        assert incremental.memo.used <= incremental.cache_bytes
