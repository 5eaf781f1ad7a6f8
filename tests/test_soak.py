"""Soak test (``make soak``; marked slow, not run by CI): a trajectory of 50 checkpoint pairs on a
local Ray instance while a killer thread SIGKILLs busy workers at random; the records must equal
a clean local run's, each point once. The numbers go to docs/reliability.md."""

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from layerlmc.analyses import find_checkpoints
from layerlmc.analyses.supervisor import descendants
from layerlmc.analyses.trajectory import trajectory
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.core.records import point_key
from layerlmc.specs import build_model

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

STEPS = 50
MLP = {"in_features": 32, "hidden": [256, 128], "num_classes": 5}


def busy_workers(node: int) -> list[int]:
    """Ray worker processes of the node below pid ``node`` running one of our tasks (their
    title names the function); only this test's: other Ray runs on the machine are not ours."""
    pids = []
    for pid in descendants(node):
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::_run_task"):
            pids.append(pid)
    return pids


class Killer(threading.Thread):
    """Every 0.3–1.2 s, SIGKILLs one busy worker chosen at random."""

    def __init__(self, node: int, seed: int = 0):
        super().__init__(daemon=True)
        self.node = node
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stop.wait(self.random.uniform(0.3, 1.2)):
            pids = busy_workers(self.node)
            if pids:
                try:
                    os.kill(self.random.choice(pids), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


def test_soak_trajectory_with_workers_killed(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mlp", MLP)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for side in "ab":
        state = dict(init)
        for step in range(STEPS):  # a random walk per side, as a training run drifts
            state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}
            save_state_dict(state if step else init, tmp_path / side / f"step_{step:04d}.safetensors")
    generator = torch.Generator().manual_seed(1)
    data = {"test": (torch.randn(8000, 32, generator=generator),
                     torch.randint(0, 5, (8000,), generator=generator))}
    a, b = find_checkpoints(tmp_path / "a"), find_checkpoints(tmp_path / "b")
    options = {"cumulative": ["deep"], "alphas": "0:1:5", "progress": False,
               "unit": "step"}

    began = time.perf_counter()
    trajectory(model, a, b, data, tmp_path / "clean", **options)
    clean_seconds = time.perf_counter() - began

    from layerlmc.analyses.executors import RayExecutor

    executor = RayExecutor(num_cpus=2, max_retries=20)
    assert executor.node is not None, "the soak test kills the workers of its own Ray node"
    killer = Killer(executor.node.process.pid)
    try:
        began = time.perf_counter()
        killer.start()
        trajectory(model, a, b, data, tmp_path / "ray", executor=executor, **options)
        ray_seconds = time.perf_counter() - began
    finally:
        killer.stop.set()
        killer.join()
        executor.close()

    def records(folder):
        return [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]

    clean, distributed = records(tmp_path / "clean"), records(tmp_path / "ray")
    keys = [point_key(r) for r in distributed]
    identical = ({json.dumps(r, sort_keys=True) for r in clean}
                 == {json.dumps(r, sort_keys=True) for r in distributed})
    report = {"steps": STEPS, "cells": executor.tasks, "records": len(distributed), "kills": killer.kills,
              "retries": executor.retries, "duplicates": len(keys) - len(set(keys)),
              "identical": identical, "clean_local_s": round(clean_seconds, 1),
              "ray_s": round(ray_seconds, 1)}
    print("\nsoak:", json.dumps(report))
    assert report["duplicates"] == 0
    assert identical
    assert killer.kills > 0 and executor.retries >= 1
