"""A Ray cluster of two nodes on this machine, each a `ray start` of its own: cells run on both
and give the local run's records; a node that cannot import layerlmc gives one error line.

Every node runs under the executor's supervisor (``analyses/supervisor.py``), tied to this
process: the finally of each test ends exactly the processes it started (and a killed pytest
takes them along), never anyone else's (`ray stop` would end every Ray node of the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from layerlmc.analyses import executors
from layerlmc.analyses.executors import _free_port

from .test_executors import _as_set, _cli_args, _records, pair_steps  # noqa: F401 - a fixture

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not executors.PrivateNode.supported(), reason="needs Linux /proc")]

SUPERVISOR = Path(executors.__file__).with_name("supervisor.py")
#: a `sitecustomize` that makes layerlmc unimportable, as on a node where it is not installed
#: (layerlmc is on every path of this machine, so only a blocked import can stand for that)
WITHOUT_LAYERLMC = '''
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "layerlmc" or name.startswith("layerlmc."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


def _environment(**extra) -> dict:
    # a cluster without token authentication (the machine may hold a token for other clusters)
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", **extra}


@contextlib.contextmanager
def _node(folder: Path, args: list[str], env: dict):
    """``ray start --block ARGS`` under a supervisor; ended, with all its processes, on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "node.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-I", str(SUPERVISOR), str(os.getpid()), str(folder), sys.executable,
             "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
             "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}", *args],
            stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"ray start failed: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"ray start never came up: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield proc
    finally:
        proc.stdin.close()  # the supervisor ends the node's whole process tree
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _cluster(head_cpus: int, second_env: dict):
    """A head node and a second node (one CPU, a resource of its own), both on 127.0.0.1."""
    port = _free_port()
    # a short folder: Ray's socket paths under it must fit in 107 bytes
    folder = Path(tempfile.mkdtemp(prefix="lmc-test-ray-", dir="/tmp"))
    try:
        with _node(folder / "head", ["--head", f"--port={port}", f"--num-cpus={head_cpus}",
                                     "--include-dashboard=false", f"--temp-dir={folder / 'ray'}",
                                     '--resources={"head_node": 1}'], _environment()), \
             _node(folder / "second", [f"--address=127.0.0.1:{port}", "--num-cpus=1",
                                       '--resources={"second_node": 1}'], second_env):
            yield f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The command line as a process of its own (this one may already hold a Ray instance)."""
    return subprocess.run([sys.executable, "-m", "layerlmc.cli.main", *argv], capture_output=True,
                          text=True, timeout=600, env=_environment())


#: the test's MLP, with a pause in every forward pass: a cell lasts longer than a worker takes
#: to start, so the first node to have a worker cannot run every cell before the other has one
#: (Ray hands a leased worker one queued task after the other)
SLOW_MODEL = '''
import time
from layerlmc.models import MLP

class Slow(MLP):
    def forward(self, x):
        time.sleep(0.2)
        return super().forward(x)

def make():
    return Slow(in_features=16, hidden=[12, 8], num_classes=3)
'''


def test_cells_run_on_both_nodes_and_equal_the_local_run(pair_steps, tmp_path):  # noqa: F811
    root, *_ = pair_steps
    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    args = _cli_args(root)
    at = args.index("--model")
    args[at:at + 8] = ["--model", f"{tmp_path / 'slow.py'}:make"]
    args[args.index("--every") + 1] = "1"  # all four steps: 32 cells
    local = _cli([*args, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    with _cluster(1, _environment()) as address:
        proc = _cli([*args, "--out", str(tmp_path / "ray"), "--executor", "ray", "--address", address])
    assert proc.returncode == 0, proc.stderr
    ran = re.search(r"Ray: (\d+) tasks ran on (\d+) nodes? \(([\d + ]+)\)", proc.stderr)
    assert ran, proc.stderr
    print(f"\n{ran.group(0)}")  # with -s: how the cells were shared
    per_node = [int(n) for n in ran.group(3).split("+")]
    assert int(ran.group(2)) == 2 and all(n > 0 for n in per_node), proc.stderr
    records = _records(tmp_path / "ray")
    assert _as_set(records) == _as_set(_records(tmp_path / "local"))
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["status"] == "complete"


def test_a_node_without_layerlmc_is_one_error_line(pair_steps, tmp_path):  # noqa: F811
    root, *_ = pair_steps
    blocker = tmp_path / "no-layerlmc"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(WITHOUT_LAYERLMC)
    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    # the head has no CPU for tasks: every cell goes to the node without layerlmc
    with _cluster(0, _environment(PYTHONPATH=path)) as address:
        began = time.monotonic()
        proc = _cli([*_cli_args(root), "--out", str(tmp_path / "out"), "--executor", "ray",
                     "--address", address])
        seconds = time.monotonic() - began
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("layerlmc: error:")]
    assert len(errors) == 1, proc.stderr
    assert "cannot import layerlmc" in errors[0] and "install layerlmc" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 120, f"{seconds:.0f} s"
