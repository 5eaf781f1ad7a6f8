"""Executors: Ray gives the local executor's records, retries dead workers, ships data once."""

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerlmc.analyses import find_checkpoints
from layerlmc.analyses.executors import (
    WORKER_DIED,
    LocalExecutor,
    PrivateNode,
    RayExecutor,
    get_executor,
)
from layerlmc.api import federate, robustness, trajectory
from layerlmc.cli.main import main
from layerlmc.config import FederatedConfig, load_config
from layerlmc.core.checkpoints import load_state_dict, save_state_dict
from layerlmc.core.records import RunDir, point_key
from layerlmc.core.runs import round_checkpoint
from layerlmc.errors import LayerLMCError
from layerlmc.models import MLP
from layerlmc.specs import build_model
from layerlmc.train import federated

from .test_cli import _fails
from .test_federated import fed_config  # noqa: F401 - a fixture
from .test_subspace import trained  # noqa: F401 - a fixture

ray = pytest.importorskip("ray")

MLP_ARGS = {"in_features": 16, "hidden": [12, 8], "num_classes": 3}


@pytest.fixture(scope="module")
def ray_executor():
    """One local Ray instance (2 CPUs) for the module; tasks defined here travel by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = RayExecutor(num_cpus=2, max_retries=2)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def pair_steps(tmp_path_factory):
    """Checkpoints of a and b at four steps around one initialization, and the data."""
    root = tmp_path_factory.mktemp("steps")
    torch.manual_seed(0)
    model = build_model("mlp", MLP_ARGS)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for side in "ab":
        for step in range(4):
            moved = {k: v + 0.2 * step * torch.randn_like(v) for k, v in init.items()}
            save_state_dict(moved, root / side / f"epoch_{step:04d}.safetensors")
    data = {"train": (torch.randn(120, 16), torch.randint(0, 3, (120,))),
            "test": (torch.randn(80, 16), torch.randint(0, 3, (80,)))}
    return root, model, find_checkpoints(root / "a"), find_checkpoints(root / "b"), data


def _records(folder):
    lines = (folder / "points.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _as_set(records):
    return {json.dumps(r, sort_keys=True) for r in records}


def _sorted(table):
    columns = [c for c in table.columns if c != "value"]
    return table.sort_values(columns).reset_index(drop=True)


class Double:
    def __call__(self, task):
        return task * 2


class DieOnce:
    """Kills its worker process the first time it sees each task (a marker file remembers)."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, task):
        marker = self.folder / f"seen_{task}"
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return task + 100


class AlwaysDie:
    def __call__(self, task):
        os._exit(1)


class Refuse:
    def __call__(self, task):
        raise LayerLMCError(f"task {task} refused")


class Warns:
    """Says what a user needs to hear from inside a worker: layerlmc warnings (one the same in
    every task, one of its own per task, one the driver said itself) and a Python warning."""

    def __call__(self, task):
        log = logging.getLogger("layerlmc")
        log.warning("worker note: the same in every task")
        log.warning("worker note: task %d", task)
        log.warning("the driver said this already")
        log.info("worker note: only information")  # as locally: not shown below WARNING
        warnings.warn("a Python warning from a worker", UserWarning, stacklevel=1)
        return task


def test_local_and_ray_map_in_task_order(ray_executor):
    assert list(LocalExecutor().map(Double(), range(5))) == [0, 2, 4, 6, 8]
    assert list(ray_executor.map(Double(), range(7))) == [0, 2, 4, 6, 8, 10, 12]
    assert sorted(ray_executor.map_unordered(Double(), [3, 4])) == [(0, 6), (1, 8)]
    shared = ray_executor.share({"x": torch.arange(3)})
    assert torch.equal(shared.get()["x"], torch.arange(3))


def test_a_dead_worker_is_retried_and_bounded(ray_executor, tmp_path):
    before = ray_executor.retries
    assert list(ray_executor.map(DieOnce(tmp_path), [1, 2])) == [101, 102]
    assert ray_executor.retries - before == 2
    with pytest.raises(LayerLMCError, match="failed 3 times on Ray workers that died"):
        list(ray_executor.map(AlwaysDie(), [0]))
    # an error of the task itself is not retried: it is raised as it would be locally
    with pytest.raises(LayerLMCError, match="task 5 refused"):
        list(ray_executor.map(Refuse(), [5]))


def test_worker_warnings_reach_the_driver_once_each(ray_executor, caplog):
    executor = RayExecutor()  # joins the module's Ray instance, with counts of its own
    with caplog.at_level(logging.INFO, logger="layerlmc"):
        logging.getLogger("layerlmc").warning("the driver said this already")
        assert list(executor.map(Warns(), range(4))) == [0, 1, 2, 3]
        assert list(executor.map(Warns(), range(2))) == [0, 1]  # nothing new to say
        executor.close()
    said = [record.getMessage() for record in caplog.records]
    assert said.count("worker note: the same in every task") == 1
    assert said.count("the driver said this already") == 1  # the driver's own line only
    assert said.count("UserWarning: a Python warning from a worker") == 1
    assert sorted(m for m in said if m.startswith("worker note: task")) == [
        f"worker note: task {i}" for i in range(4)]
    assert "worker note: only information" not in said
    assert "Ray: 6 tasks ran on 1 node (6)" in said


class Untraceable(MLP):
    """The test MLP with a branch on the data: torch.fx cannot trace it (the same numbers)."""

    def forward(self, x):
        if x.sum() > float("inf"):
            return -super().forward(x)
        return super().forward(x)


def test_an_evaluator_fall_back_is_said_once_with_ray(pair_steps, ray_executor, tmp_path, caplog):
    root, _, a, b, data = pair_steps
    model = Untraceable(**MLP_ARGS)
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        trajectory(model, a, b, data, tmp_path / "ray", executor=RayExecutor(), evaluator="incremental",
                   every=3, plots=False, progress=False)
    said = [record.getMessage() for record in caplog.records]
    # built by the driver, then by every worker: said by the driver, not again by each worker
    assert len([m for m in said if "cannot be traced with torch.fx" in m]) == 1, said


def test_retries_are_said_once_then_counted(ray_executor, tmp_path, caplog, capfd):
    executor = RayExecutor(max_retries=2)
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        assert list(executor.map(DieOnce(tmp_path), [1, 2, 3])) == [101, 102, 103]
        executor.close()
    time.sleep(2)  # Ray prints the raylet's notices from a thread of its own, a little later
    printed = capfd.readouterr()
    # not Ray's paragraph per dead worker either, on stdout amid the command's tables
    assert WORKER_DIED not in printed.out + printed.err
    said = [record.getMessage() for record in caplog.records]
    died = [m for m in said if m.startswith("a Ray worker died")]
    assert len(died) == 1 and "running it again (each task up to 2 more times)" in died[0], said
    assert "Ray: 3 tasks ran again after their workers died" in said
    assert executor.retries == 3


def test_unknown_executor_and_misplaced_address():
    with pytest.raises(LayerLMCError, match="unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(LayerLMCError, match="--address .* --executor ray"):
        get_executor("local", address="head:6379")


def test_trajectory_on_ray_equals_local_and_ships_data_once(pair_steps, ray_executor, tmp_path, monkeypatch):
    root, model, a, b, data = pair_steps
    options = {"cumulative": ["deep"], "plots": False, "progress": False}
    local, local_distances = trajectory(model, a, b, data, tmp_path / "local", **options)
    shares = []
    original = RayExecutor.share
    monkeypatch.setattr(RayExecutor, "share", lambda self, value: shares.append(value) or original(self, value))
    on_ray, ray_distances = trajectory(model, a, b, data, tmp_path / "ray", executor=ray_executor, **options)
    pd.testing.assert_frame_equal(_sorted(local), _sorted(on_ray))
    pd.testing.assert_frame_equal(local_distances, ray_distances)
    assert _as_set(_records(tmp_path / "local")) == _as_set(_records(tmp_path / "ray"))
    # the evaluator (model and data) once, then each step's two endpoints once
    assert len(shares) == 1 + 2 * len(a)


def test_killed_ray_driver_resumes_without_duplicates(pair_steps, ray_executor, tmp_path, monkeypatch):
    root, model, a, b, data = pair_steps
    options = {"cumulative": ["shallow"], "plots": False, "progress": False}
    trajectory(model, a, b, data, tmp_path / "clean", **options)
    calls = {"n": 0}
    original = RunDir.append_points

    def killed_after_five_cells(self, records):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        original(self, records)

    monkeypatch.setattr(RunDir, "append_points", killed_after_five_cells)
    with pytest.raises(KeyboardInterrupt):
        trajectory(model, a, b, data, tmp_path / "killed", executor=ray_executor, **options)
    monkeypatch.setattr(RunDir, "append_points", original)
    partial = _records(tmp_path / "killed")
    assert 0 < len(partial) < len(_records(tmp_path / "clean"))
    trajectory(model, a, b, data, tmp_path / "killed", executor=ray_executor, **options)
    resumed = _records(tmp_path / "killed")
    assert len({point_key(r) for r in resumed}) == len(resumed)  # no cell twice
    assert _as_set(resumed) == _as_set(_records(tmp_path / "clean"))
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "complete"


def test_robustness_on_ray_equals_local(pair_steps, ray_executor, tmp_path):
    root, model, a, b, data = pair_steps
    options = {"samples": 2, "every": 3, "plots": False, "progress": False}
    local = robustness(model, a, b, data, tmp_path / "local", **options)
    on_ray = robustness(model, a, b, data, tmp_path / "ray", executor=ray_executor, **options)
    pd.testing.assert_frame_equal(local, on_ray)
    assert _as_set(_records(tmp_path / "local")) == _as_set(_records(tmp_path / "ray"))


def test_federated_clients_train_on_ray_to_the_same_weights(fed_config, ray_executor, tmp_path):  # noqa: F811
    local = federate(load_config(FederatedConfig, fed_config), tmp_path / "local", progress=False)
    on_ray = federate(load_config(FederatedConfig, {**fed_config, "executor": "ray"}), tmp_path / "ray",
                      progress=False)
    names = [federated.client_name(i, 3) for i in range(3)]
    for name in [*names, federated.AVERAGE]:
        clean, distributed = (load_state_dict(round_checkpoint(f, name, 2)) for f in (local, on_ray))
        assert all(torch.equal(clean[k], distributed[k]) for k in clean)
    assert (local / "history.jsonl").read_text() == (on_ray / "history.jsonl").read_text()


def _model_and_data(root) -> list[str]:
    """--model and --data of the pair_steps checkpoints, with a data file of its own."""
    (root / "data.py").write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(3)\n"
        "    return {'test': (torch.randn(60, 16, generator=g), torch.randint(0, 3, (60,), generator=g))}\n")
    model = ["--model", "mlp", "--model-arg", "in_features=16", "--model-arg", "hidden=[12, 8]",
             "--model-arg", "num_classes=3"]
    return [*model, "--data", f"{root / 'data.py'}:make"]


def _cli_args(root) -> list[str]:
    """``layerlmc trajectory`` on the pair_steps folders."""
    return ["trajectory", str(root / "a"), "--b", str(root / "b"), *_model_and_data(root),
            "--no-plots", "--every", "3"]


def test_missing_ray_is_one_line_and_claims_no_folder(pair_steps, tmp_path, capsys, monkeypatch):
    root, *_ = pair_steps
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    _fails(capsys, [*_cli_args(root), "--out", str(tmp_path / "out"), "--executor", "ray"],
           "pip install 'layerlmc[ray]'")
    assert not (tmp_path / "out").exists()


def test_unreachable_cluster_is_one_line_at_once(pair_steps, tmp_path):
    # a process of its own: this one's Ray is running already and would be joined instead
    root, *_ = pair_steps
    argv = [*_cli_args(root), "--out", str(tmp_path / "out"), "--executor", "ray",
            "--address", "127.0.0.1:1"]
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "layerlmc.cli.main", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("layerlmc: error:")]
    assert len(errors) == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - began < 60  # not Ray's minute of retries
    assert not (tmp_path / "out").exists()


REFUSED_FOR_GPUS = """
import os, time
from layerlmc.analyses.executors import RayExecutor
from layerlmc.analyses.supervisor import descendants
from layerlmc.errors import LayerLMCError
try:
    RayExecutor(num_cpus=1, gpus_per_task=1)
except LayerLMCError as err:
    print(err)
time.sleep(0.5)
print("left:", len(descendants(os.getpid())))
"""


@pytest.mark.skipif(not PrivateNode.supported(), reason="a private node needs Linux")
def test_a_cluster_without_gpus_is_refused_and_its_node_ended():
    # a process of its own: this one's Ray is running already and would be joined instead
    proc = subprocess.run([sys.executable, "-c", REFUSED_FOR_GPUS], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "has 0 GPUs, and every task of a CUDA run needs one" in proc.stdout, proc.stderr
    assert "left: 0" in proc.stdout, proc.stdout


NEVER_CLOSED = """
from layerlmc.analyses.executors import RayExecutor
executor = RayExecutor(num_cpus=1)
print(executor.node.process.pid, executor.node.folder, flush=True)
"""


@pytest.mark.skipif(not PrivateNode.supported(), reason="a private node needs Linux")
def test_a_private_node_ends_with_a_process_that_never_closed_it():
    proc = subprocess.run([sys.executable, "-c", NEVER_CLOSED], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    supervisor, folder = proc.stdout.split()
    deadline = time.monotonic() + 20
    while (Path("/proc", supervisor).exists() or Path(folder).exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path("/proc", supervisor).exists(), "the supervisor outlived its driver"
    assert not Path(folder).exists(), "the node's folder outlived its driver"


def test_cli_runs_on_ray_and_refuses_an_address_without_it(pair_steps, ray_executor, tmp_path, capsys):
    root, *_ = pair_steps
    args = _cli_args(root)
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert _as_set(_records(tmp_path / "ray")) == _as_set(_records(tmp_path / "local"))
    capsys.readouterr()
    _fails(capsys, [*args, "--out", str(tmp_path / "bad"), "--address", "head:6379"], "--executor ray")


def test_barriers_and_subspace_commands_on_ray_equal_local(pair_steps, trained, ray_executor,  # noqa: F811
                                                           tmp_path):
    root, *_ = pair_steps
    pair = ["barriers", str(root / "a" / "epoch_0003.safetensors"),
            str(root / "b" / "epoch_0003.safetensors"), *_model_and_data(root), "--no-plots",
            "--cumulative", "deep"]
    noise = ["subspace", str(trained), "--sigma", "0.01:2:3", "--per-layer", "--samples", "2",
             "--device", "cpu", "--no-plots"]
    for command, table in ((pair, "barriers.csv"), (noise, "subspace.csv")):
        for executor in ("ray", "local"):
            assert main([*command, "--out", str(tmp_path / command[0] / executor),
                         "--executor", executor]) == 0
        local, on_ray = tmp_path / command[0] / "local", tmp_path / command[0] / "ray"
        assert _as_set(_records(on_ray)) == _as_set(_records(local))
        for name in (table, "config.yaml"):
            assert (on_ray / name).read_bytes() == (local / name).read_bytes()
