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


def _frame(rows):
    """Point records as compute_barriers reads them: the path fields a test leaves out are null."""
    frame = pd.DataFrame(rows)
    for column in ("step", "unit", "order", "group_index"):
        if column not in frame:
            frame[column] = None
    return frame


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
    return _frame(rows)


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


def _swap_points():
    """A pair whose group path (base a) is fine inside but whose α = 1 end, a carrying b's
    conv1, is terrible: M(a) = 0.5, M(b) = 0.6; the group path 0.5, 0.56, 7.0."""
    rows = [dict(kind="endpoint", group="full", base="a", alpha=0.0, split="test", loss=0.5, accuracy=0.9),
            dict(kind="endpoint", group="full", base="b", alpha=1.0, split="test", loss=0.6, accuracy=0.9)]
    for alpha, loss in ((0.0, 0.5), (0.5, 0.9), (1.0, 0.6)):
        rows.append(dict(kind="full", group="full", base=None, alpha=alpha, split="test", loss=loss,
                         accuracy=0.9))
    for kind, order in (("group", None), ("cumulative", "shallow")):
        for alpha, loss in ((0.0, 0.5), (0.5, 0.56), (1.0, 7.0)):
            rows.append(dict(kind=kind, group="conv1", group_index=0, base="a", order=order,
                             alpha=alpha, split="test", loss=loss, accuracy=0.9))
    return _frame(rows)


def test_max_on_group_paths_leaves_out_the_layer_swap():
    from layerlmc.core.barriers import select_barriers, swap_note

    def value(table, **kw):
        rows = table[(table[list(kw)] == pd.Series(kw)).all(axis=1)]
        assert len(rows) == 1, rows
        return rows["value"].item()

    loss = dict(metric="loss", definition="max")
    table = compute_barriers(_swap_points(), ("midpoint", "max"), ("models",))
    # the full path's α = 1 end is b itself: max against the models
    assert value(table, kind="full", reference="models", **loss) == pytest.approx(0.9 - 0.55)
    for kind in ("group", "cumulative"):
        # the default: against the path's own ends (0.5 and 7.0), which the row records
        assert value(table, kind=kind, reference="path", **loss) == pytest.approx(0.0)
        assert not ((table["kind"] == kind) & (table["definition"] == "max")
                    & (table["reference"] == "models")).any()
        # the midpoint keeps the paper's reference
        assert value(table, kind=kind, metric="loss", definition="midpoint",
                     reference="models") == pytest.approx(0.56 - 0.55)
    # asked for explicitly: the whole path against the models, the swap end's 7.0 − 0.6 included
    swap = compute_barriers(_swap_points(), ("max",), ("models-swap",))
    assert set(swap["reference"]) == {"models"}
    assert value(swap, kind="group", **loss) == pytest.approx(7.0 - 0.6)
    assert value(swap, kind="full", **loss) == pytest.approx(0.9 - 0.55)
    # models and path together: one max row per group path
    both = compute_barriers(_swap_points(), ("max",), ("models", "path"))
    assert not both.duplicated(["kind", "group", "base", "order", "metric", "definition",
                                "reference"]).any()
    assert value(both, kind="group", reference="path", **loss) == pytest.approx(0.0)
    # the printed tables choose the rows each request uses, with a note
    summary = summary_table(table, "max", "models")
    assert summary.loc["full", "test loss [a]"] == pytest.approx(0.35)
    assert summary.loc["conv1", "test loss [a]"] == pytest.approx(0.0)
    assert summary_table(swap, "max", "models-swap").loc["conv1", "test loss [a]"] == pytest.approx(6.4)
    note = swap_note(select_barriers(table, "max", "models"), "max", "models")
    assert "reference path" in note and "layer swap" in note and "models-swap" in note
    assert "layer swap" in swap_note(select_barriers(swap, "max", "models-swap"), "max", "models-swap")
    assert swap_note(select_barriers(table, "midpoint", "models"), "midpoint", "models") is None


def test_midpoint_rows_do_not_change_with_max():
    alone = compute_barriers(_swap_points(), ("midpoint",), ("models",))
    together = compute_barriers(_swap_points(), ("midpoint", "max"), ("models",))
    pd.testing.assert_frame_equal(
        alone, together[together["definition"] == "midpoint"].reset_index(drop=True))


def test_figures_of_max_show_the_rows_each_request_uses(tmp_path):
    from layerlmc.plots.barriers import plot_run

    for references in (("models",), ("models-swap",)):
        table = compute_barriers(_swap_points(), ("max",), references)
        names = {p.name for p in plot_run(_swap_points(), table, tmp_path / references[0])}
        assert {"layer_barriers.png", "cumulative_barriers.png"} <= names, references
