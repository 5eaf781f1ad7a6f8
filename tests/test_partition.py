"""Federated partitions: seeded, exact cover, the promised class structure, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layerlmc.data.partition import (
    SCHEMES,
    ClientSplit,
    format_summary,
    partition,
    summary_table,
)
from layerlmc.errors import LayerLMCError

FEW = settings(max_examples=40, deadline=None)


def balanced(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


def assert_exact_cover(parts: list[ClientSplit], n: int) -> None:
    for p in parts:
        for t in (p.train, p.test):
            assert t.dtype == torch.int64 and t.ndim == 1
            assert torch.equal(t, torch.sort(t).values)
    everything = torch.cat([torch.cat([p.train, p.test]) for p in parts])
    assert torch.equal(torch.sort(everything).values, torch.arange(n))


def same(a: list[ClientSplit], b: list[ClientSplit]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.train, y.train) and torch.equal(x.test, y.test)
        for x, y in zip(a, b, strict=True)
    )


def classes_of(labels: torch.Tensor, part: ClientSplit) -> int:
    return int(labels[part.indices].unique().numel())


@pytest.mark.parametrize("scheme", [*SCHEMES, "contiguous"])
def test_same_seed_same_indices_other_seed_other_indices(scheme: str) -> None:
    y = balanced(400, 10)
    kw = {"alpha": 0.5, "min_size": 5}
    a = partition(y, 5, scheme, seed=3, **kw)
    assert same(a, partition(y, 5, scheme, seed=3, **kw))
    assert not same(a, partition(y, 5, scheme, seed=4, **kw))


def test_no_global_rng_use() -> None:
    y = balanced(300, 3)
    torch.manual_seed(0)
    np.random.seed(0)
    before = torch.rand(1), np.random.rand()
    torch.manual_seed(0)
    np.random.seed(0)
    partition(y, 4, "dirichlet", min_size=1)
    partition(y, 4, "iid")
    assert (torch.rand(1), np.random.rand()) == before


@FEW
@given(
    labels=st.lists(st.integers(-2, 6), min_size=1, max_size=120),
    clients=st.integers(1, 8),
    scheme=st.sampled_from(SCHEMES),
    seed=st.integers(0, 2**32),
    test_fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]),
    alpha=st.sampled_from([0.05, 0.5, 5.0]),
)
def test_every_scheme_covers_each_example_exactly_once(
    labels: list[int], clients: int, scheme: str, seed: int, test_fraction: float, alpha: float
) -> None:
    y = np.array(labels, dtype=np.int64)
    try:
        parts = partition(
            y,
            clients,
            scheme,
            seed=seed,
            alpha=alpha,
            min_size=0,
            test_fraction=test_fraction,
            classes_per_client=1,
        )
    except LayerLMCError as e:
        # Only refusals the API promises: too many clients, or classes too small for shards.
        assert clients > len(y) or scheme == "shards", str(e)
        return
    assert len(parts) == clients
    assert_exact_cover(parts, len(y))
    for p in parts:
        if test_fraction > 0 and len(p) >= 2:
            assert p.test.numel() >= 1 and p.train.numel() >= 1
        if test_fraction == 0:
            assert p.test.numel() == 0


@FEW
@given(
    classes=st.integers(2, 10),
    per_class=st.integers(4, 30),
    clients=st.integers(1, 12),
    k=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_shards_give_each_client_exactly_k_classes(
    classes: int, per_class: int, clients: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(rng.permutation(np.arange(classes * per_class) % classes))
    try:
        parts = partition(y, clients, "shards", classes_per_client=k, seed=seed)
    except LayerLMCError as e:
        shards_of_a_class = -(-clients * k // classes)
        too_few_shards = clients * k < classes
        assert k > classes or too_few_shards or per_class < shards_of_a_class, str(e)
        return
    assert_exact_cover(parts, len(y))
    assert [classes_of(y, p) for p in parts] == [k] * clients


def test_shards_with_uneven_classes_stay_within_k() -> None:
    y = torch.tensor([0] * 50 + [1] * 31 + [2] * 17 + [3] * 9 + [4] * 40)
    parts = partition(y, 6, "shards", classes_per_client=3, seed=1)
    assert_exact_cover(parts, len(y))
    assert all(classes_of(y, p) <= 3 for p in parts)


def test_shards_cifar100_setting_fedbabu() -> None:
    # 100 clients x 10 shards over 100 classes: 10 shards per class (create_cifar100_shards.py).
    y = balanced(100 * 50, 100)
    parts = partition(y, 100, "shards", classes_per_client=10)
    assert_exact_cover(parts, len(y))
    assert {classes_of(y, p) for p in parts} == {10}
    assert {len(p) for p in parts} == {50}


def test_dirichlet_respects_min_size() -> None:
    y = balanced(2000, 10)
    for seed in range(3):
        parts = partition(y, 10, "dirichlet", alpha=0.3, min_size=40, seed=seed)
        assert_exact_cover(parts, len(y))
        assert min(len(p) for p in parts) >= 40


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    y = balanced(4000, 10)

    def mean_classes(alpha: float) -> float:
        parts = partition(y, 10, "dirichlet", alpha=alpha, min_size=1, seed=0)
        return float(np.mean([classes_of(y, p) for p in parts]))

    skewed, mild = mean_classes(0.05), mean_classes(100.0)
    assert mild == 10.0
    assert skewed < 5.0


def test_iid_is_near_equal_and_mixed() -> None:
    y = balanced(1003, 10)
    parts = partition(y, 4, "iid")
    assert {len(p) for p in parts} <= {250, 251}
    assert all(classes_of(y, p) == 10 for p in parts)


@pytest.mark.parametrize("scheme", ["halves", "contiguous"])
def test_halves_are_contiguous_blocks_in_order(scheme: str) -> None:
    y = balanced(101, 3)
    parts = partition(y, 2, scheme, seed=5)
    assert torch.equal(parts[0].indices, torch.arange(51))
    assert torch.equal(parts[1].indices, torch.arange(51, 101))
    three = partition(y, 3, scheme)
    assert [p.indices[0].item() for p in three] == [0, 34, 68]
    assert all(torch.equal(p.indices, torch.arange(p.indices[0], p.indices[-1] + 1)) for p in three)


def test_local_test_fraction_and_small_clients() -> None:
    parts = partition(balanced(400, 4), 4, "iid", test_fraction=0.25)
    assert [(p.train.numel(), p.test.numel()) for p in parts] == [(75, 25)] * 4
    tiny = partition(balanced(5, 2), 3, "halves", test_fraction=0.1)
    assert [(p.train.numel(), p.test.numel()) for p in tiny] == [(1, 1), (1, 1), (1, 0)]


def test_numpy_and_torch_labels_agree() -> None:
    y = balanced(300, 6)
    assert same(partition(y, 3, "shards"), partition(y.numpy(), 3, "shards"))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"clients": 0}, ["clients", "0"]),
        ({"clients": 3, "alpha": 0.0}, ["alpha", "0.0"]),
        ({"clients": 3, "alpha": -1.0}, ["alpha", "-1.0"]),
        ({"clients": 3, "classes_per_client": 0}, ["classes_per_client", "0"]),
        ({"clients": 3, "test_fraction": 1.0}, ["test_fraction", "[0, 1)", "1.0"]),
        ({"clients": 3, "test_fraction": -0.1}, ["test_fraction", "-0.1"]),
        ({"clients": 3, "min_size": -1}, ["min_size", "-1"]),
        ({"clients": 3, "seed": -1}, ["seed", "-1"]),
        ({"clients": 13}, ["12 examples", "13 clients"]),
        ({"clients": 3, "scheme": "dirichlt"}, ["partition scheme", "dirichlt", "'dirichlet'"]),
        ({"clients": 3, "scheme": "pat"}, ["partition scheme", "'pat'", "shards"]),
    ],
)
def test_bad_input_is_one_line_error_naming_the_numbers(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(LayerLMCError) as info:
        partition(balanced(12, 3), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_labels() -> None:
    with pytest.raises(LayerLMCError, match="1-D"):
        partition(torch.zeros(4, 2, dtype=torch.long), 2)
    with pytest.raises(LayerLMCError, match="integers.*float32"):
        partition(torch.zeros(4), 2)


def test_shards_impossible_names_the_numbers() -> None:
    y = torch.tensor([0] * 100 + [1] * 100 + [2] * 100 + [3] * 5)
    with pytest.raises(LayerLMCError) as info:
        partition(y, 20, "shards", classes_per_client=2)
    assert (
        str(info.value)
        == "cannot give 20 clients 2 classes each: class 3 has 5 examples for 10 shards"
    )
    with pytest.raises(LayerLMCError, match="3 classes each: the labels have only 2 classes"):
        partition(balanced(40, 2), 2, "shards", classes_per_client=3)
    with pytest.raises(LayerLMCError, match="10 classes need at least 10 shards, got 2 x 3 = 6"):
        partition(balanced(100, 10), 2, "shards", classes_per_client=3)


def test_dirichlet_impossible_suggests_alpha_or_min_size() -> None:
    # With a tiny alpha every class goes (almost) whole to one client, so 8 of 10 clients
    # stay empty: no number of redraws can meet min_size.
    with pytest.raises(LayerLMCError) as info:
        partition(balanced(200, 2), 10, "dirichlet", alpha=0.001, min_size=5)
    message = str(info.value)
    for word in ["10 clients", "min_size=5", "200 examples", "alpha=0.001", "larger alpha"]:
        assert word in message
    with pytest.raises(LayerLMCError, match="at least 30 examples each: only 200"):
        partition(balanced(200, 2), 10, "dirichlet", min_size=30)


def test_summary_table_columns_and_sums() -> None:
    y = torch.tensor([0] * 30 + [1] * 20 + [5] * 10)
    parts = partition(y, 3, "shards", classes_per_client=2, seed=2)
    table = summary_table(y, parts)
    assert list(table.columns) == ["client", "n_train", "n_test", "classes", "0", "1", "5"]
    assert table["client"].tolist() == [0, 1, 2]
    assert table[["0", "1", "5"]].sum().tolist() == [30, 20, 10]
    assert (table[["0", "1", "5"]].sum(axis=1) == table["n_train"] + table["n_test"]).all()
    assert table["classes"].tolist() == [2, 2, 2]
    assert (table[["0", "1", "5"]].gt(0).sum(axis=1) == table["classes"]).all()
    text = format_summary(table)
    assert "3 clients, 60 examples" in text and "3 classes" in text


def test_format_summary_folds_many_classes() -> None:
    y = balanced(600, 100)
    text = format_summary(summary_table(y, partition(y, 10, "shards", classes_per_client=10)))
    assert "label:count" in text and "100 classes" in text
    assert max(len(line) for line in text.splitlines()) < 120


def test_summary_table_rejects_foreign_partition() -> None:
    parts = partition(balanced(50, 2), 2)
    with pytest.raises(LayerLMCError, match="outside 0..9"):
        summary_table(balanced(10, 2), parts)
