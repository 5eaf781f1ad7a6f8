import pytest
import torch

from layerlmc.core.groups import layer_groups
from layerlmc.core.paths import cumulative_paths, full_path, group_paths, interpolate, parse_alphas
from layerlmc.errors import LayerLMCError


def _states():
    torch.manual_seed(0)
    a = {"l1.weight": torch.randn(3, 4), "l1.bias": torch.randn(3), "bn.running_mean": torch.randn(3),
         "bn.num_batches_tracked": torch.tensor(4), "l2.weight": torch.randn(2, 3)}
    b = {k: (v + torch.randn_like(v.float()) if v.is_floating_point() else v + 3) for k, v in a.items()}
    return a, b


def _all_paths(a):
    groups = layer_groups(a)
    float_keys = [k for k, v in a.items() if v.is_floating_point()]
    alphas = (0.0, 0.3, 0.5, 1.0)
    paths = [full_path(float_keys, alphas), *group_paths(groups, ("a", "b"), alphas)]
    for order in ("shallow", "deep", "random", "minimal", "window:2", "l2,l1"):
        paths += cumulative_paths(groups, order, ("a", "b"), alphas, seed=3)
    return paths


def test_alpha_zero_is_exactly_a_and_one_exactly_b_on_interpolated_keys():
    a, b = _states()
    for path in _all_paths(a):
        for point in path.points():
            state = interpolate(a, b, point)
            base = b if path.base == "b" else a
            for key in a:
                if key in path.keys and a[key].is_floating_point():
                    if point.alpha == 0.0:
                        assert torch.equal(state[key], a[key]), (path, key)
                    elif point.alpha == 1.0:
                        assert torch.equal(state[key], b[key]), (path, key)
                    else:
                        expected = (1 - point.alpha) * a[key] + point.alpha * b[key]
                        torch.testing.assert_close(state[key], expected)
                else:
                    # never touched: the base's own tensor object, not a copy
                    assert state[key] is base[key], (path, key)


def test_full_path_ends_are_the_endpoints():
    a, b = _states()
    path = full_path([k for k in a if a[k].is_floating_point()], (0.0, 1.0))
    start, end = (interpolate(a, b, p) for p in path.points())
    for key in a:
        if a[key].is_floating_point():
            assert torch.equal(start[key], a[key]) and torch.equal(end[key], b[key])
    # integer buffers are never blended
    assert end["bn.num_batches_tracked"] is a["bn.num_batches_tracked"]


def test_group_path_touches_only_its_group():
    a, b = _states()
    for path in group_paths(layer_groups(a), ("a", "b"), (0.5,)):
        base = a if path.base == "a" else b
        state = interpolate(a, b, next(path.points()))
        changed = {k for k in a if state[k] is not base[k]}
        assert changed <= set(path.keys)
        assert changed == {k for k in path.keys if a[k].is_floating_point()}


def test_cumulative_orders_grow_one_group_at_a_time():
    a, _ = _states()
    groups = layer_groups(a)
    shallow = cumulative_paths(groups, "shallow", ("a",), (0.5,))
    assert [p.group for p in shallow] == ["l1", "bn", "l2"]
    assert [len(p.keys) for p in shallow] == [2, 4, 5]
    deep = cumulative_paths(groups, "deep", ("a",), (0.5,))
    assert [p.group for p in deep] == ["l2", "bn", "l1"]
    window = cumulative_paths(groups, "window:2", ("b",), (0.5,))
    assert [p.group for p in window] == ["l1..bn", "bn..l2"] and window[0].order == "window:2"
    random_1 = [p.group for p in cumulative_paths(groups, "random", ("a",), (0.5,), seed=7)]
    random_2 = [p.group for p in cumulative_paths(groups, "random", ("a",), (0.5,), seed=7)]
    assert random_1 == random_2 and sorted(random_1) == ["bn", "l1", "l2"]
    explicit = cumulative_paths(groups, "l2,l1", ("a",), (0.5,))
    assert [p.group for p in explicit] == ["l2", "l1"] and explicit[0].order.startswith("list:")


def test_unknown_order_suggests_closest():
    a, _ = _states()
    with pytest.raises(LayerLMCError, match="did you mean 'shallow'"):
        cumulative_paths(layer_groups(a), "shalow", ("a",), (0.5,))
    with pytest.raises(LayerLMCError, match="window width"):
        cumulative_paths(layer_groups(a), "window:9", ("a",), (0.5,))


def test_parse_alphas():
    assert parse_alphas("0,0.5,1") == (0.0, 0.5, 1.0)
    assert parse_alphas("0:1:11")[3] == 0.3
    assert len(parse_alphas("0:1:11")) == 11
    assert parse_alphas("-0.5:1.5:5", extrapolate=True) == (-0.5, 0.0, 0.5, 1.0, 1.5)
    with pytest.raises(LayerLMCError, match="outside \\[0, 1\\].*--extrapolate"):
        parse_alphas("0,1.5")
    with pytest.raises(LayerLMCError, match="cannot read alpha grid"):
        parse_alphas("0:1")
    with pytest.raises(LayerLMCError, match="cannot read alpha grid"):
        parse_alphas("half")
