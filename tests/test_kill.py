"""Real ``kill -9`` of the command line: a rerun continues from what the killed process left.

The trajectory driver and the trainer run as subprocesses and are SIGKILLed at seeded random
moments (no ``finally``, no ``status_on_error`` runs); the rerun must end with exactly the records,
barriers and weights of an uninterrupted run, with no duplicated point or epoch. A kill that
arrives after the process already finished is harmless: the equalities are checked all the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from layerlmc.cli.main import main
from layerlmc.config import TrainConfig, load_config
from layerlmc.core.checkpoints import load_state_dict
from layerlmc.core.records import point_key
from layerlmc.train import train_runs

from .conftest import write_tiny_fmnist
from .test_train import TINY

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX kill -9")

TRAJECTORY_ARGS = ["--cumulative", "shallow", "--cumulative", "deep", "--alphas", "0,0.25,0.5,0.75,1",
                   "--max-examples", "120", "--no-plots"]
TRAIN_ARGS = [*TINY, "batch_size=8", "model.args={width: 16, hidden: 32}", "epochs=8"]
#: how many kills landed while the process was still running (reported with ``pytest -s``)
LANDED: list[tuple[str, bool, str]] = []


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """Tiny Fashion-MNIST files (as the ``tiny_fmnist`` fixture) and the environment of the
    subprocesses that read them."""
    root = tmp_path_factory.mktemp("kill")
    write_tiny_fmnist(root / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERLMC_DATA": str(root / "data")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERLMC_DATA", str(root / "data"))  # for the in-process clean runs
        yield {"root": root, "env": env}
    if LANDED:
        print(f"\nkills that landed mid-run: {sum(hit for _, hit, _ in LANDED)} of {len(LANDED)}: {LANDED}")


@pytest.fixture(scope="module")
def analysed(fmnist):
    """A pair trained for 8 epochs and a clean, uninterrupted trajectory analysis of it."""
    root = fmnist["root"]
    pair = train_runs(load_config(TrainConfig, None, [*TINY, "epochs=8"]), root / "pair", progress=False)
    clean = root / "clean"
    assert main(["trajectory", str(pair), "--out", str(clean), *TRAJECTORY_ARGS]) == 0
    return {**fmnist, "pair": pair, "clean": clean}


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "layerlmc.cli.main", *args], env=env,
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, delay: float, label: str, progress=lambda: "",
               timeout: float = 120) -> bool:
    """Wait until ``ready()`` (or the process ends), then ``delay`` seconds more, then SIGKILL;
    returns whether the kill found the process still running."""
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not ready():
            assert time.monotonic() < deadline, f"{label}: never became ready"
            time.sleep(0.01)
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        if proc.poll() is None:  # not yet reaped, so the pid is still this process's
            os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=timeout)
        # a process that exited just before the signal was still complete: it ends with 0
        assert code in (0, -signal.SIGKILL), f"{label}: exit code {code}"
        landed = code == -signal.SIGKILL
        LANDED.append((label, landed, progress()))
        return landed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(args: list[str], env: dict, log: Path) -> None:
    proc = _start(args, env, log)
    try:
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-3000:]


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _records(folder: Path) -> list[dict]:
    lines = (folder / "points.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line parses


def _records_tolerant(path: Path) -> list[dict]:
    """The complete records of a file a kill may have torn."""
    rows = []
    for line in path.read_text().splitlines(keepends=True) if path.exists() else []:
        try:
            if line.endswith("\n"):
                rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _sorted_csv(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    return table.sort_values(list(table.columns)).reset_index(drop=True)


@pytest.mark.parametrize("torn", [False, True], ids=["kills", "kills-and-torn-lines"])
def test_trajectory_killed_at_random_moments_ends_like_a_clean_run(analysed, torn):
    rng = random.Random(1234 + torn)
    env, clean = analysed["env"], analysed["clean"]
    out = analysed["root"] / f"killed-{'torn' if torn else 'plain'}"
    log = analysed["root"] / f"{out.name}.log"
    points = out / "points.jsonl"
    args = ["trajectory", str(analysed["pair"]), "--out", str(out), *TRAJECTORY_ARGS]
    clean_records = _records(clean)

    def progress() -> str:
        return f"{_line_count(points)}/{len(clean_records)} lines"

    landings = []
    for attempt in range(3 if not torn else 2):
        before = _line_count(points)
        proc = _start(args, env, log)
        label = f"trajectory{'-torn' if torn else ''} #{attempt + 1}"
        if attempt == 1:
            # any moment from the start: importing, claiming the folder, repairing, evaluating
            landed = _kill_when(proc, lambda: True, rng.uniform(1.5, 4.0), label, progress)
        else:
            # a moment of the evaluation, once this process has appended records
            landed = _kill_when(proc, lambda before=before: _line_count(points) > before,
                                rng.uniform(0.0, 0.7), label, progress)
        landings.append(landed)
        if landed and (out / "run.json").exists():
            # SIGKILL runs no handler: the run is never marked interrupted or failed
            assert json.loads((out / "run.json").read_text())["status"] in ("running", "complete")
        if torn:
            # a kill while writing: half of a record not yet stored (first kill), or a whole
            # record that lost only its newline (second kill); preferably one of the step the
            # kill interrupted, which the rerun evaluates first and does not read again
            complete = _records_tolerant(points)
            stored = {point_key(r) for r in complete}
            missing = [r for r in clean_records if point_key(r) not in stored]
            current = [r for r in missing if complete and r["step"] == complete[-1]["step"]]
            line = json.dumps(rng.choice(current or missing or clean_records))
            with open(points, "a", encoding="utf-8") as handle:
                handle.write(line[: len(line) // 2] if attempt == 0 else line)
    _finish(args, env, log)
    assert any(landings), "no kill landed while the analysis ran: the test tested nothing"
    _assert_like_clean(out, clean)


def _assert_like_clean(out: Path, clean: Path) -> None:
    clean_records = _records(clean)
    records = _records(out)
    keys = [point_key(r) for r in records]
    assert len(keys) == len(set(keys)), "a point was stored twice"
    assert len(records) == len(clean_records)

    def as_set(rows):
        return sorted(json.dumps(r, sort_keys=True) for r in rows)

    assert as_set(records) == as_set(clean_records)  # keys, loss, accuracy, n: all equal
    pd.testing.assert_frame_equal(_sorted_csv(out / "barriers.csv"), _sorted_csv(clean / "barriers.csv"))
    pd.testing.assert_frame_equal(_sorted_csv(out / "distances.csv"), _sorted_csv(clean / "distances.csv"))
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not list(out.glob("*.tmp"))


#: runs a command (argv[2:], output to the file argv[1]) as the child subreaper of whatever it
#: leaves behind: a process orphaned by the command comes here, not to init, so the test can
#: count it; prints the command's pid, then lives (reaping) until its stdin closes
HARNESS = """
import ctypes, os, select, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
print(child.pid, flush=True)
while not (select.select([sys.stdin], [], [], 0.1)[0] and not os.read(0, 1)):
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
"""


def _living_below(pid: int) -> dict[int, str]:
    """The processes below ``pid`` that still run (zombies are gone already), by name."""
    from layerlmc.analyses.supervisor import descendants

    found = {}
    for child in descendants(pid):
        try:
            stat = (Path("/proc") / str(child) / "stat").read_text()
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            found[child] = os.path.basename(cmdline[0].decode(errors="replace")) or stat.split()[1]
    return found


def _node_folder(pid: int) -> str | None:
    """The FOLDER argument of the private node's supervisor, if ``pid`` is that process."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    script = next((i for i, arg in enumerate(argv) if arg.endswith("supervisor.py")), None)
    return argv[script + 2] if script is not None else None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts processes in /proc")
def test_ray_driver_killed_mid_run_leaves_no_ray_process_and_ends_like_a_clean_run(analysed):
    pytest.importorskip("ray")
    env, clean = analysed["env"], analysed["clean"]
    out = analysed["root"] / "killed-ray"
    log = analysed["root"] / "killed-ray.log"
    points = out / "points.jsonl"
    args = ["trajectory", str(analysed["pair"]), "--out", str(out), *TRAJECTORY_ARGS,
            "--executor", "ray"]
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(log), sys.executable, "-m",
                                "layerlmc.cli.main", *args], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        driver = int(harness.stdout.readline())
        deadline = time.monotonic() + 120
        # once the first cells are written: the kill lands amid cells in flight on workers
        while _line_count(points) == 0:
            assert driver in _living_below(harness.pid), f"the driver ended early: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the Ray run never wrote a record"
            time.sleep(0.01)
        time.sleep(0.3)
        ray_before = {pid: name for pid, name in _living_below(harness.pid).items() if pid != driver}
        folders = [_node_folder(pid) for pid in ray_before if _node_folder(pid)]
        assert driver in _living_below(harness.pid), "the Ray run ended before the kill"
        os.kill(driver, signal.SIGKILL)
        partial = _line_count(points)
        deadline = time.monotonic() + 20
        while (left := _living_below(harness.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        LANDED.append(("ray driver", True, f"{partial} lines, {len(ray_before)} Ray processes"))
    finally:
        for pid in _living_below(harness.pid):  # ours, whatever the outcome: none may linger
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        harness.stdin.close()
        harness.wait(timeout=60)
    # the GCS, the raylet, the agents, the workers, ...: all of them were there, none is left
    assert len(ray_before) >= 4, ray_before
    assert not left, f"left behind by a kill -9 of the driver: {left}"
    # and the node's folder (its logs and sockets) went with it
    assert len(folders) == 1 and not Path(folders[0]).exists(), folders
    assert 0 < partial < len(_records(clean))
    # the rest locally (a Ray rerun after a kill: test_executors.py): the test stays fast
    _finish(args[: args.index("--executor")], env, log)
    _assert_like_clean(out, clean)


def _checkpoints(folder: Path) -> set[Path]:
    return set(folder.glob("checkpoints/*/epoch_*.safetensors"))


def _new_checkpoint(folder: Path):
    """A test for "an epoch was saved since now"."""
    before = _checkpoints(folder)
    return lambda: bool(_checkpoints(folder) - before)


def _same(x, y) -> bool:
    """Equal nested optimizer states: tensors bit for bit."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same, x, y))
    return x == y


def test_training_killed_mid_epoch_resumes_to_the_weights_of_a_clean_run(fmnist, tmp_path):
    rng = random.Random(99)
    env = fmnist["env"]
    config = tmp_path / "kill.yaml"
    config.write_text("name: kill\nruns: 2\n")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(["train", str(config), *TRAIN_ARGS, "--out", str(clean)]) == 0
    args = ["train", str(config), *TRAIN_ARGS, "--out", str(killed)]
    log = tmp_path / "train.log"

    epochs = int(TRAIN_ARGS[-1].split("=")[1])

    def progress() -> str:
        return f"{len(_checkpoints(killed))}/{2 * (epochs + 1)} checkpoints"

    landings = []
    for attempt in range(3):
        if attempt == 0:  # a moment after run a's first epoch is saved
            ready, delay = (killed / "checkpoints" / "a" / "epoch_0001.safetensors").exists, rng.uniform(0.0, 1.5)
        elif attempt == 1:  # any moment of the rerun from its start: importing, resuming, training
            ready, delay = (lambda: True), rng.uniform(1.5, 4.5)
        else:  # a moment after this rerun saved an epoch of its own
            ready, delay = _new_checkpoint(killed), rng.uniform(0.0, 0.8)
        landed = _kill_when(_start(args, env, log), ready, delay, f"train #{attempt + 1}", progress)
        landings.append(landed)
        if landed:  # SIGKILL runs no handler: the run is never marked interrupted or failed
            assert json.loads((killed / "run.json").read_text())["status"] in ("running", "complete")
    _finish(args, env, log)
    assert any(landings), "no kill landed while training ran: the test tested nothing"

    for role in "ab":
        for epoch in range(epochs + 1):
            name = f"checkpoints/{role}/epoch_{epoch:04d}.safetensors"
            want, got = load_state_dict(clean / name), load_state_dict(killed / name)
            assert want.keys() == got.keys()
            assert all(torch.equal(want[k], got[k]) for k in want), f"{name} differs from the clean run"
        name = f"checkpoints/{role}/optimizer_{epochs:04d}.pt"
        want, got = (torch.load(folder / name, weights_only=True) for folder in (clean, killed))
        assert _same(want, got), f"{name} differs from the clean run"
    lines = (killed / "history.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]  # every line parses: a torn one was repaired
    keys = [(r["role"], r["epoch"]) for r in history]
    assert len(keys) == len(set(keys)), f"an epoch was recorded twice: {keys}"
    assert sorted(keys) == [(role, e) for role in "ab" for e in range(epochs + 1)]

    def without_time(path: Path) -> list[dict]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows),
                      key=lambda r: (r["role"], r["epoch"]))

    assert without_time(killed / "history.jsonl") == without_time(clean / "history.jsonl")
    assert json.loads((killed / "run.json").read_text())["status"] == "complete"
    assert not list(killed.rglob("*.tmp"))
