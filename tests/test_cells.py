"""Cells without Ray: blocks of several steps, cells finishing in any order, partly stored cells;
one pair (barriers, subspace) as the cells of one step."""

import json
import logging
import random

import pandas as pd
import pytest
import torch

from layerlmc.analyses import find_checkpoints
from layerlmc.analyses.executors import LocalExecutor
from layerlmc.api import barriers, robustness, subspace, trajectory
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.core.records import RunDir, point_key
from layerlmc.errors import LayerLMCError
from layerlmc.specs import build_model


class Shuffling(LocalExecutor):
    """Many cells in flight (so blocks hold several steps), finishing in a seeded random order,
    as a cluster's would; the data is shared in this process."""

    name = "shuffling"
    window = 64

    def __init__(self, seed: int = 0):
        self.random = random.Random(seed)
        self.tasks = 0

    def map_unordered(self, fn, tasks):
        tasks = list(tasks)
        self.tasks += len(tasks)
        order = list(range(len(tasks)))
        self.random.shuffle(order)
        for index in order:
            yield index, fn(tasks[index])


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    torch.manual_seed(0)
    model = build_model("mlp", {"in_features": 8, "hidden": [6], "num_classes": 3})
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for side in "ab":
        for step in range(5):
            state = {k: v + 0.3 * step * torch.randn_like(v) for k, v in init.items()}
            save_state_dict(state, root / side / f"epoch_{step:04d}.safetensors")
    data = {"train": (torch.randn(64, 8), torch.randint(0, 3, (64,))),
            "test": (torch.randn(48, 8), torch.randint(0, 3, (48,)))}
    return root, model, find_checkpoints(root / "a"), find_checkpoints(root / "b"), data


def _lines(folder):
    return (folder / "points.jsonl").read_text().splitlines()


def _as_set(folder):
    return {json.dumps(json.loads(line), sort_keys=True) for line in _lines(folder)}


def _sorted(table):
    return table.sort_values([c for c in table.columns if c != "value"]).reset_index(drop=True)


def test_blocks_of_steps_in_any_order_give_the_local_records(steps, tmp_path):
    root, model, a, b, data = steps
    options = {"cumulative": ["deep"], "plots": False, "progress": False}
    local, _ = trajectory(model, a, b, data, tmp_path / "local", **options)
    executor = Shuffling()
    cells, _ = trajectory(model, a, b, data, tmp_path / "cells", executor=executor, **options)
    pd.testing.assert_frame_equal(_sorted(local), _sorted(cells))
    assert _as_set(tmp_path / "local") == _as_set(tmp_path / "cells")
    # endpoints, full path, 2 groups × 2 bases, 2 cumulative prefixes × 2 bases: 10 a step
    assert executor.tasks == 5 * 10


def test_a_resume_with_more_paths_evaluates_only_missing_points(steps, tmp_path):
    root, model, a, b, data = steps
    out = tmp_path / "resumed"
    trajectory(model, a, b, data, out, plots=False, progress=False)
    # damage: lose a few records of the middle (a killed writer's file is cut at its end, but
    # a partly stored cell can also come from a run with fewer alphas)
    lines = _lines(out)
    kept = [line for i, line in enumerate(lines) if i % 7 != 3]
    (out / "points.jsonl").write_text("".join(line + "\n" for line in kept))
    options = {"cumulative": ["shallow"], "alphas": "0,0.25,0.5,0.75,1", "plots": False,
               "progress": False}
    executor = Shuffling(seed=1)
    trajectory(model, a, b, data, out, executor=executor, **options)
    trajectory(model, a, b, data, tmp_path / "clean", **options)
    keys = [tuple(sorted(json.loads(line).items())) for line in _lines(out)]
    assert len(keys) == len(set(keys))
    assert _as_set(out) >= _as_set(tmp_path / "clean")
    # a rerun finds every cell stored and runs none
    again = Shuffling()
    trajectory(model, a, b, data, out, executor=again, **options)
    assert again.tasks == 0


def test_robustness_cells_in_any_order_give_the_local_table(steps, tmp_path):
    root, model, a, b, data = steps
    options = {"samples": 2, "every": 2, "plots": False, "progress": False}
    local = robustness(model, a, b, data, tmp_path / "local", **options)
    cells = robustness(model, a, b, data, tmp_path / "cells", executor=Shuffling(), **options)
    pd.testing.assert_frame_equal(local, cells)
    assert _as_set(tmp_path / "local") == _as_set(tmp_path / "cells")


def _same_bytes(one, other, *names):
    for name in names:
        assert (one / name).read_bytes() == (other / name).read_bytes(), name


def _killed_after(monkeypatch, cells):
    """RunDir.append_points raising KeyboardInterrupt after ``cells`` appends (a killed driver)."""
    calls = {"n": 0}
    original = RunDir.append_points

    def append(self, records):
        calls["n"] += 1
        if calls["n"] > cells:
            raise KeyboardInterrupt
        original(self, records)

    monkeypatch.setattr(RunDir, "append_points", append)
    return lambda: monkeypatch.setattr(RunDir, "append_points", original)


def _no_key_twice(folder):
    keys = [point_key(json.loads(line)) for line in _lines(folder)]
    assert len(keys) == len(set(keys))


def test_one_pair_runs_as_the_cells_of_one_step(steps, tmp_path, monkeypatch):
    root, model, a, b, data = steps
    options = {"cumulative": ["shallow", "deep"], "definitions": ["midpoint", "max"],
               "references": ["models", "path"], "plots": False, "progress": False}
    local = barriers(model, a[4], b[4], data, out=tmp_path / "local", **options)
    executor = Shuffling()
    cells = barriers(model, a[4], b[4], data, out=tmp_path / "cells", executor=executor, **options)
    pd.testing.assert_frame_equal(local, cells)
    _same_bytes(tmp_path / "local", tmp_path / "cells", "barriers.csv", "config.yaml")
    assert _as_set(tmp_path / "local") == _as_set(tmp_path / "cells")
    # endpoints, full path, 2 groups × 2 bases, 2 orders × 2 prefixes × 2 bases
    assert executor.tasks == 1 + 1 + 4 + 8
    pd.testing.assert_frame_equal(local, barriers(model, a[4], b[4], data, executor=Shuffling(),
                                                  **options))  # no folder: records in memory

    restore = _killed_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        barriers(model, a[4], b[4], data, out=tmp_path / "killed", executor=Shuffling(1), **options)
    restore()
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "interrupted"
    assert 0 < len(_lines(tmp_path / "killed")) < len(_lines(tmp_path / "local"))
    barriers(model, a[4], b[4], data, out=tmp_path / "killed", executor=Shuffling(2), **options)
    _no_key_twice(tmp_path / "killed")
    assert _as_set(tmp_path / "killed") == _as_set(tmp_path / "local")
    _same_bytes(tmp_path / "local", tmp_path / "killed", "barriers.csv")
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "complete"
    again = Shuffling()
    barriers(model, a[4], b[4], data, out=tmp_path / "killed", executor=again, **options)
    assert again.tasks == 0


def test_subspace_cells_give_the_local_records_and_skip_an_empty_null_space(
        steps, tmp_path, monkeypatch, caplog):
    root, model, a, b, data = steps
    # one tensor per group: head.bias has 3 numbers, which 4 snapshots span; no null space
    options = {"span": "trajectory", "snapshots": [a[1], b[1]], "sigmas": "0:1:3", "samples": 2,
               "per_layer": True, "groups": "param", "splits": ["train", "test"],
               "plots": False, "progress": False}
    local = subspace(model, a[4], b[4], data, tmp_path / "local", **options)
    caplog.clear()
    executor = Shuffling()
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        cells = subspace(model, a[4], b[4], data, tmp_path / "cells", executor=executor, **options)
    assert [r.message for r in caplog.records if "null space is empty" in r.message] == [
        "layer group head.bias: the snapshots span all 3 coordinates, so the null space is "
        "empty; no null-space points"]
    pd.testing.assert_frame_equal(local, cells)
    _same_bytes(tmp_path / "local", tmp_path / "cells", "subspace.csv", "config.yaml")
    assert _as_set(tmp_path / "local") == _as_set(tmp_path / "cells")
    # the clean networks, then 5 targets × 3 directions × 3 σ, less head.bias's null space
    assert executor.tasks == 1 + 5 * 3 * 3 - 3

    restore = _killed_after(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        subspace(model, a[4], b[4], data, tmp_path / "killed", executor=Shuffling(1), **options)
    restore()
    subspace(model, a[4], b[4], data, tmp_path / "killed", executor=Shuffling(2), **options)
    _no_key_twice(tmp_path / "killed")
    assert _as_set(tmp_path / "killed") == _as_set(tmp_path / "local")
    _same_bytes(tmp_path / "local", tmp_path / "killed", "subspace.csv")
    again = Shuffling()  # every cell stored, and the empty null space is no missing cell
    subspace(model, a[4], b[4], data, tmp_path / "killed", executor=again, **options)
    assert again.tasks == 0


def test_an_address_without_ray_claims_no_folder(steps, tmp_path):
    root, model, a, b, data = steps
    with pytest.raises(LayerLMCError, match="--executor ray"):
        barriers(model, a[4], b[4], data, out=tmp_path / "b", address="head:6379", plots=False)
    with pytest.raises(LayerLMCError, match="--executor ray"):
        subspace(model, a[4], b[4], data, tmp_path / "s", address="head:6379", plots=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()
