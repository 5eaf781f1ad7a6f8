import math

import pandas as pd
import pytest
import torch

from layerlmc import barriers as run_barriers
from layerlmc.core.barriers import barrier_value, compute_barriers, summary_table
from layerlmc.errors import LayerLMCError
from layerlmc.models import mlp


def test_barrier_definitions_by_hand():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    values = [1.0, 2.0, 4.0, 2.5, 3.0]
    assert barrier_value(alphas, values, 1.0, 3.0, "midpoint") == pytest.approx(4.0 - 2.0)
    # gaps: 0, 2 - 1.5, 4 - 2, 2.5 - 2.5, 0
    assert barrier_value(alphas, values, 1.0, 3.0, "max") == pytest.approx(2.0)
    # with other reference values (the full models, for a group path)
    assert barrier_value(alphas, values, 0.0, 0.0, "max") == pytest.approx(4.0)
    assert math.isnan(barrier_value([0.0, 1.0], [1.0, 1.0], 1.0, 1.0, "midpoint"))
    assert math.isnan(barrier_value(alphas, [1.0, float("nan"), 1, 1, 1], 1.0, 1.0, "max"))


def test_identical_endpoints_give_zero_barrier_everywhere():
    torch.manual_seed(0)
    model = mlp(in_features=5, hidden=[7, 6], num_classes=4)
    data = {"train": (torch.randn(50, 5), torch.randint(0, 4, (50,))),
            "test": (torch.randn(21, 5), torch.randint(0, 4, (21,)))}
    state = model.state_dict()
    table = run_barriers(model, state, {k: v.clone() for k, v in state.items()}, data,
                         cumulative=("shallow", "deep", "random", "minimal", "window:2"),
                         alphas="0:1:5", definitions=("midpoint", "max"), references=("models", "path"),
                         batch_size=8, progress=False)
    assert set(table["definition"]) == {"midpoint", "max"}
    assert set(table["reference"]) == {"models", "path"}
    assert set(table["kind"]) == {"full", "group", "cumulative"}
    assert (table["value"].abs() < 1e-6).all()


def _points():
    rows = []
    for split, (la, lb, lmid) in {"test": (0.5, 0.7, 1.6)}.items():
        rows.append(dict(kind="endpoint", group="full", base="a", alpha=0.0, split=split, loss=la, accuracy=0.9))
        rows.append(dict(kind="endpoint", group="full", base="b", alpha=1.0, split=split, loss=lb, accuracy=0.8))
        for alpha, loss in ((0.0, la), (0.5, lmid), (1.0, lb)):
            rows.append(dict(kind="full", group="full", base=None, alpha=alpha, split=split, loss=loss, accuracy=0.5))
        for alpha, loss in ((0.0, 0.55), (0.5, 0.65), (1.0, 0.75)):
            rows.append(dict(kind="group", group="conv1", group_index=0, base="a", alpha=alpha, split=split,
                             loss=loss, accuracy=0.85))
    frame = pd.DataFrame(rows)
    for column in ("step", "unit", "order", "group_index"):
        if column not in frame:
            frame[column] = None
    return frame


def test_group_barrier_uses_the_full_models_as_reference():
    table = compute_barriers(_points(), ("midpoint",), ("models", "path"))
    row = lambda **kw: table[(table[list(kw)] == pd.Series(kw)).all(axis=1)]["value"].item()  # noqa: E731
    assert row(group="conv1", metric="loss", reference="models") == pytest.approx(0.65 - 0.6)
    assert row(group="conv1", metric="loss", reference="path") == pytest.approx(0.65 - 0.65)
    assert row(group="conv1", metric="error", reference="models") == pytest.approx(0.15 - 0.15)
    assert row(group="full", metric="loss", reference="models") == pytest.approx(1.6 - 0.6)
    summary = summary_table(table)
    assert list(summary.index) == ["full", "conv1"]
    assert summary.loc["full", "test loss [a]"] == pytest.approx(1.0)


def test_bad_choices_are_named():
    with pytest.raises(LayerLMCError, match="did you mean 'midpoint'"):
        compute_barriers(_points(), ("midpont",))
    with pytest.raises(LayerLMCError, match="unknown barrier reference"):
        compute_barriers(_points(), ("max",), ("model-ish",))


def test_identical_endpoints_are_evaluated_once(monkeypatch):
    from layerlmc.evaluate.plain import Evaluator

    calls = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, *a: calls.append(a) or original(self, *a))
    torch.manual_seed(0)
    model = mlp(in_features=5, hidden=[7, 6], num_classes=4)
    data = {"test": (torch.randn(9, 5), torch.randint(0, 4, (9,)))}
    state = model.state_dict()
    run_barriers(model, state, dict(state), data, cumulative=("shallow",), progress=False)
    assert len(calls) == 1  # every point of every path is the shared network
