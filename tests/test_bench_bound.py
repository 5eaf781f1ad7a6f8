"""The benchmark's sharing bound (bench/cases.py): the sweep's distinct states, and the share of
whole forward passes left when every value is computed once per distinct weights it depends on."""

import pytest

from bench.cases import shared_fraction, sweep_states


def test_the_sweeps_states_are_the_ones_the_floor_counts():
    for groups in (3, 7):
        assert len(sweep_states(groups, cli=False)) == 3 + 2 * groups
        assert len(sweep_states(groups, cli=True)) == 3 + 4 * groups
    # with fewer groups some points are one network: one group's path is the full path, and
    # of two groups, a with b's first layer is b with a's second, and the other way round
    assert len(sweep_states(1, cli=False)) == 3 and len(sweep_states(2, cli=True)) == 9
    assert sweep_states(2, cli=False) == {("a", "a"), ("b", "b"), ("m", "m"), ("m", "a"),
                                          ("a", "m"), ("m", "b"), ("b", "m")}


def test_what_depends_on_no_weights_is_computed_once_and_what_depends_on_all_of_them_always():
    states = {("a",), ("b",)}
    assert shared_fraction(states, [(1.0, frozenset({0}))]) == 1.0
    assert shared_fraction(states, [(1.0, frozenset())]) == 0.5
    assert shared_fraction({("a", "a")}, [(0.2, frozenset()), (0.8, frozenset({0, 1}))]) == 1.0


def test_the_cli_case_counted_by_hand():
    """MLP 784-512×6-10, a chain weighted by its matrix products: 3 distinct values of the first
    layer (a1, b1, m1), 9 of the second, then 3 + 4j of the j-th: 0.48 of the 31 whole passes."""
    flops = [784 * 512] + [512 * 512] * 5 + [512 * 10]
    chain = [(cost, frozenset(range(j + 1))) for j, cost in enumerate(flops)]
    by_hand = (3 * flops[0] + 9 * flops[1] + sum((3 + 4 * j) * flops[j - 1] for j in range(3, 8)))
    expected = by_hand / (31 * sum(flops))
    assert shared_fraction(sweep_states(7, cli=True), chain) == pytest.approx(expected)
    assert expected == pytest.approx(0.4836, abs=1e-4)


def test_a_branch_that_skips_a_group_is_shared_by_the_states_that_differ_only_there():
    """A residual block: the shortcut reads the block's input only, so states that differ in the
    block's own layer share it, where the order of execution alone would not."""
    states = sweep_states(2, cli=False)  # groups: stem, block
    work = [(1.0, frozenset({0})), (1.0, frozenset({0, 1})), (1.0, frozenset({0}))]
    distinct_stems = len({s[:1] for s in states})
    assert shared_fraction(states, work) == pytest.approx(
        (2 * distinct_stems + len(states)) / (3 * len(states)))
