"""The sweep's scratch state (core.paths.Scratch): points are built into memory reused point
after point, and the records are bit for bit those of fresh tensors per point. Lazy states
(core.paths.LazyState) for the incremental evaluator: no state is built at all."""

import weakref

import torch
from torch import nn

from layerlmc.core.groups import layer_groups
from layerlmc.core.paths import (
    LazyState,
    Scratch,
    cumulative_paths,
    full_path,
    group_paths,
    interpolate,
    interpolated_keys,
)
from layerlmc.evaluate import Evaluator, IncrementalEvaluator, prepare_splits
from layerlmc.evaluate.points import endpoint_paths, evaluate_paths


def _net():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.BatchNorm1d(6),
                         nn.ReLU(), nn.Linear(6, 3))


def _setup():
    torch.manual_seed(0)
    model, other = _net(), _net()
    for m in (model, other):  # non-trivial BatchNorm statistics
        m.train()
        m(torch.randn(64, 5) * 2 + 1)
    a, b = dict(model.state_dict()), dict(other.state_dict())
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    splits = prepare_splits({"train": (x, y), "test": (x[:21] + 0.5, y[:21])})
    groups = layer_groups(a)
    alphas = (0.0, 0.3, 0.5, 1.0)
    paths = [full_path([k for k, v in a.items() if v.is_floating_point()], alphas),
             *group_paths(groups, ("a", "b"), alphas),
             *cumulative_paths(groups, "deep", ("a", "b"), alphas)]
    return model, a, b, splits, paths


def test_plain_records_are_bit_identical_to_fresh_tensors_per_point():
    model, a, b, splits, paths = _setup()
    for bn in ("interpolate", "recompute"):
        evaluator = Evaluator(model, splits, batch_size=16, bn=bn,
                              bn_batches=[splits["train"].inputs[:32]])
        records = evaluate_paths(evaluator, a, b, paths, progress=False)
        by_key = {(r["kind"], r["group"], r["base"], r["order"], r["alpha"], r["split"]): r
                  for r in records}
        fresh = Evaluator(model, splits, batch_size=16, bn=bn,
                          bn_batches=[splits["train"].inputs[:32]])
        checked = 0
        for path in [*endpoint_paths(), *paths]:
            for point in path.points():
                state = fresh.prepare(interpolate(a, b, point))  # new tensors, no scratch
                for split in splits:
                    metrics = fresh.evaluate(state, split)
                    r = by_key[(path.kind, path.group, path.base, path.order, point.alpha, split)]
                    # exactly the same floats: records stay bit-identical
                    assert (r["loss"], r["accuracy"], r["n"]) == (
                        metrics.loss, metrics.accuracy, metrics.n), (bn, path, point.alpha)
                    checked += 1
        assert checked == len(records)


def test_scratch_holds_one_state_at_most_and_never_overlaps_live_tensors():
    _, a, b, _, paths = _setup()
    points = [p for path in paths for p in path.points()]
    scratch = Scratch(a, (interpolated_keys(p, a) for p in points))
    float_bytes = sum(v.numel() * v.element_size() for v in a.values() if v.is_floating_point())
    # the largest point is the full path: one state's floats, plus at most 64 bytes per tensor
    assert float_bytes <= scratch.nbytes <= float_bytes + 64 * len(a)
    for point in points:
        scratch.reset()
        state = interpolate(a, b, point, scratch)
        fresh = interpolate(a, b, point)
        moved = interpolated_keys(point, a)
        spans = sorted((state[k].data_ptr(), state[k].data_ptr() + state[k].nbytes) for k in moved)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
        assert all(state[k].data_ptr() % 64 == 0 for k in moved)
        for key in a:
            assert torch.equal(state[key], fresh[key])
            if key not in moved:
                assert state[key] is (b if point.path.base == "b" else a)[key]
    # a state nobody announced gets tensors of its own instead of overlapping the scratch
    small = Scratch(a, [["0.weight"]])
    first = small.take(a["0.weight"])
    second = small.take(a["0.weight"])
    assert first.data_ptr() != second.data_ptr() and second.shape == a["0.weight"].shape


class _Recording(Evaluator):
    """A batched evaluator that checks, at the time of each call, that every job's state is the
    point it stands for (no other job of the chunk has overwritten it)."""

    kind = "recording"

    def __init__(self, *args, a, b, **kwargs):
        super().__init__(*args, **kwargs)
        self.a, self.b, self.calls = a, b, 0

    def evaluate_many(self, jobs, split):
        self.calls += 1
        snapshots = [{k: v.clone() for k, v in job.state.items()} for job in jobs]
        results = [self.evaluate(job.state, split) for job in jobs]
        for job, snapshot in zip(jobs, snapshots):
            assert all(torch.equal(job.state[k], v) for k, v in snapshot.items())
        return results


def test_batched_chunks_share_the_scratch_without_overwriting_each_other():
    model, a, b, splits, paths = _setup()
    plain = evaluate_paths(Evaluator(model, splits, batch_size=16), a, b, paths, progress=False)
    batched_evaluator = _Recording(model, splits, batch_size=16, a=a, b=b)
    batched = evaluate_paths(batched_evaluator, a, b, paths, progress=False)
    assert batched_evaluator.calls > 0
    key = lambda r: (r["kind"], r["group"], r["base"], r["order"], r["alpha"], r["split"])  # noqa: E731
    assert {key(r): (r["loss"], r["accuracy"]) for r in batched} == {
        key(r): (r["loss"], r["accuracy"]) for r in plain}


def test_a_lazy_state_is_the_interpolated_state_and_computes_nothing_until_read():
    _, a, b, _, paths = _setup()
    for path in paths:
        for point in path.points():
            lazy, built = LazyState(a, b, point), interpolate(a, b, point)
            assert list(lazy) == list(built) and len(lazy) == len(built)
            base = b if point.path.base == "b" else a
            for key in built:
                assert torch.equal(lazy[key], built[key])  # bit for bit
                if key not in lazy.keys_interpolated:
                    assert lazy[key] is base[key]
                else:  # a new tensor per read: nothing of it is kept
                    assert lazy[key] is not lazy[key]
            pointers = {t.data_ptr() for t in lazy.sources()}
            assert {base[k].data_ptr() for k in base} <= pointers


def _alive_interpolated_bytes(monkeypatch):
    """Track the bytes of the tensors LazyState reads produce that are alive at once."""
    alive, peak = [0], [0]
    read = LazyState.__getitem__

    def tracked(self, key):
        tensor = read(self, key)
        if key in self.keys_interpolated:
            size = tensor.numel() * tensor.element_size()
            alive[0] += size
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(tensor, lambda: alive.__setitem__(0, alive[0] - size))
        return tensor

    monkeypatch.setattr(LazyState, "__getitem__", tracked)
    return peak


def test_the_incremental_sweep_builds_no_state_and_holds_one_module_at_a_time(monkeypatch):
    torch.manual_seed(0)
    model, other = (nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                                  nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 3)) for _ in range(2))
    a, b = dict(model.state_dict()), dict(other.state_dict())
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    splits = prepare_splits({"train": (x, y), "test": (x[:21] + 0.5, y[:21])})
    groups = layer_groups(a)
    paths = [full_path(list(a), (0.5,)), *group_paths(groups, ("a", "b"), (0.5, 1.0)),
             *cumulative_paths(groups, "deep", ("a", "b"), (0.5,))]
    plain = evaluate_paths(Evaluator(model, splits, batch_size=16), a, b, paths, progress=False)

    def no_scratch(self, like):
        raise AssertionError("the incremental sweep took scratch memory")

    monkeypatch.setattr(Scratch, "take", no_scratch)
    peak = _alive_interpolated_bytes(monkeypatch)
    incremental = IncrementalEvaluator(model, splits, batch_size=16)
    assert incremental.incremental and incremental.reads_lazily
    records = evaluate_paths(incremental, a, b, paths, progress=False)
    assert [(r["loss"], r["accuracy"]) for r in records] == [
        (r["loss"], r["accuracy"]) for r in plain]  # bit for bit
    # the full midpoint is read module by module: at most one Linear's weight and bias alive
    largest = max(sum(a[k].numel() * a[k].element_size() for k in g.keys) for g in groups)
    assert 0 < peak[0] <= largest


def test_a_lazy_sweep_hands_each_base_its_points_in_one_call(monkeypatch):
    """Built states are chunked to one state's bytes; lazy ones hold nothing, so a base's points
    (its endpoint, every group path of it, the full path) go in one call per split and the
    base's values are computed once per batch, not once per chunk."""
    torch.manual_seed(0)
    model, other = (nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                                  nn.Linear(40, 3)) for _ in range(2))
    a, b = dict(model.state_dict()), dict(other.state_dict())
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    splits = prepare_splits({"train": (x, y), "test": (x[:20], y[:20])})
    paths = [full_path(list(a), (0.0, 0.5, 1.0)),
             *group_paths(layer_groups(a), ("a", "b"), (0.0, 0.5, 1.0))]
    calls = []
    evaluate_many = IncrementalEvaluator.evaluate_many

    def counted(self, jobs, split):
        calls.append((split, {id(job.base) for job in jobs}, len(jobs)))
        return evaluate_many(self, jobs, split)

    monkeypatch.setattr(IncrementalEvaluator, "evaluate_many", counted)
    incremental = IncrementalEvaluator(model, splits, batch_size=16)
    records = evaluate_paths(incremental, a, b, paths, progress=False)
    plain = evaluate_paths(Evaluator(model, splits, batch_size=16), a, b, paths, progress=False)
    assert [(r["loss"], r["accuracy"]) for r in records] == [
        (r["loss"], r["accuracy"]) for r in plain]
    # per split: base a's endpoint, 3 groups × 2 new states and the full midpoint; base b's 7
    assert all(len(bases) == 1 for _, bases, _ in calls)
    assert sorted((split, count) for split, _, count in calls) == [
        ("test", 7), ("test", 8), ("train", 7), ("train", 8)]
