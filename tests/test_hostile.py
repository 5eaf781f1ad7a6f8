"""Hostile and broken inputs, one test per fault: the single list of every one we defend against.

Faults, by section below: 1. a pickle that would run code; 2. a truncated safetensors file;
3. NaN/Inf inside a checkpoint; 4. config keys unknown, of the wrong type or out of range, and
config files that are not configs; 5. a corrupted last line of ``points.jsonl``; 6. a full disk
or a read-only output folder; 7. fuzzed configs and checkpoints; 8. files that broke the loader
before (a pickle holding itself, foreign safetensors metadata).

Each fault must end in one clear ``layerlmc: error: ...`` line and a non-zero exit (or, where
the run can go on, one warning), never a traceback, never code from a file, and never a run
folder that looks complete when it is not. Cases covered elsewhere are referenced, not repeated:

- the loader alone refusing a pickle that runs code, without the side effect:
  ``test_checkpoints.py::test_pickle_that_runs_code_is_refused_without_side_effect``
- a checkpoint that is missing, truncated ``.pt``, text, garbage, without a state dict:
  ``test_checkpoints.py::test_missing_truncated_and_garbage_files``,
  ``test_review_cases.py::test_prefixes_and_garbage``
- a pickle needing code, mismatched keys/shapes, wrong options, a folder holding other results:
  ``test_cli.py::test_bad_inputs_get_one_line_and_keep_results``
- a checkpoint whose tensors make the losses non-finite: the run completes and flags them,
  ``test_cli.py::test_non_finite_losses_are_recorded_and_flagged``
- config typos and wrong types through overrides, invalid YAML, a missing config file:
  ``test_train.py::test_config_errors_name_the_key``
- a torn last line of ``points.jsonl`` / ``history.jsonl``:
  ``test_review_cases.py::test_torn_last_line_is_repaired``,
  ``test_train.py::test_torn_history_line_is_repaired_on_resume``
- a run killed mid-way ends with a clean run's records:
  ``test_trajectory.py::test_killed_trajectory_ends_with_the_records_of_a_clean_run``
"""

from __future__ import annotations

import builtins
import copy
import errno
import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from layerlmc.cli.main import main
from layerlmc.config import FederatedConfig, TrainConfig, load_config, to_dict
from layerlmc.core import checkpoints
from layerlmc.core import records as results
from layerlmc.core.checkpoints import ORDER_METADATA, check_pair, load_state_dict, save_state_dict
from layerlmc.errors import LayerLMCError

from .test_checkpoints import Exploit
from .test_cli import _args
from .test_train import TINY

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _fails(capsys, argv, *fragments) -> str:
    """``main(argv)`` fails with exactly one ``layerlmc: error:`` line holding every fragment,
    other lines being ``layerlmc:`` progress or warnings, and no traceback or internal error."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    errors = [line for line in err.splitlines() if line.startswith("layerlmc: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert all(line.startswith("layerlmc: ") for line in err.splitlines()), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _quick(f, out, *extra):
    """The barriers command on the fixture pair, small and without figures."""
    return _args(f, out, "--splits", "test", "--no-plots", *extra)


def _records(folder: Path) -> list[str]:
    """The records of a run folder, each as canonical JSON, sorted: equal for equal runs."""
    lines = (folder / "points.jsonl").read_text().splitlines()
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)


def _whole_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.decode().splitlines()]


def _status(folder: Path) -> str | None:
    path = folder / "run.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


# -- 1. a pickle that would run code ------------------------------------------------------------

@pytest.mark.parametrize("form", ["zip", "legacy", "bare-pickle"])
def test_code_running_pickle_is_refused_through_the_cli(user_files, capsys, form):
    f = user_files
    marker = f["dir"] / f"pwned-{form}"
    evil = f["dir"] / f"evil-{form}.pt"
    blob = {**f["state_a"], "evil": Exploit(marker)}
    if form == "zip":
        torch.save(blob, evil)
    elif form == "legacy":
        torch.save(blob, evil, _use_new_zipfile_serialization=False)
    else:  # not a torch file at all: a plain pickle under a .pt name
        evil.write_bytes(pickle.dumps(blob, protocol=2))
    args = _quick(f, f["dir"] / "run")
    for argv in ([*args[:1], str(evil), *args[2:]], [*args[:2], str(evil), *args[3:]]):
        _fails(capsys, argv, "refused to load", "needs code", evil.name)
        assert not marker.exists()
    with pytest.raises(LayerLMCError, match="refused to load"):
        load_state_dict(evil)
    assert not marker.exists()
    assert not (f["dir"] / "run" / "points.jsonl").exists()


# -- 2. a truncated safetensors file --------------------------------------------------------------

def test_truncated_safetensors_is_one_error_line(user_files, capsys):
    f = user_files
    data = save_state_dict(f["state_b"], f["dir"] / "whole.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    cut = f["dir"] / "cut.safetensors"
    # inside the length prefix, inside the JSON header, just after it, mid-tensor, one byte short
    for size in (0, 5, header // 2, header + 1, (header + len(data)) // 2, len(data) - 1):
        cut.write_bytes(data[:size])
        args = _quick(f, f["dir"] / "run")
        _fails(capsys, [*args[:2], str(cut), *args[3:]], "cannot read safetensors checkpoint", "cut.safetensors")
    assert not (f["dir"] / "run" / "points.jsonl").exists()


# -- 3. NaN/Inf inside a checkpoint ---------------------------------------------------------------

_GROUP_COUNT = re.compile(r"(\S+) \((\d+) of (\d+) NaN/Inf\)")


def _non_finite_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "has non-finite values" in line]


def test_non_finite_checkpoint_is_named_once_with_its_groups(user_files, capsys):
    f = user_files
    state = dict(f["state_b"])
    state["head.weight"] = torch.full_like(state["head.weight"], float("inf"))
    state["fc1.bias"] = state["fc1.bias"].clone()
    state["fc1.bias"][2] = float("nan")
    bad = f["dir"] / "bad.pt"
    torch.save(state, bad)
    args = _quick(f, f["dir"] / "bad-run")
    args[2] = str(bad)
    assert main(args) == 0  # the run goes on: nan points are recorded and flagged
    captured = capsys.readouterr()
    warnings = _non_finite_warnings(captured.err)
    assert len(warnings) == 1, captured.err
    warning = warnings[0]
    assert warning.startswith(f"layerlmc: checkpoint b ({bad}) has non-finite values in ")
    assert warning.endswith("; points that use them will be nan")
    # exactly the affected groups, in model order, with counts: fc1 is 4×6 + 6, head 6×3 + 3
    assert _GROUP_COUNT.findall(warning) == [("fc1", "1", "30"), ("head", "18", "21")]
    assert "nan!" in captured.out
    records = _whole_lines(f["dir"] / "bad-run" / "points.jsonl")
    assert any(r["loss"] != r["loss"] for r in records)
    assert _status(f["dir"] / "bad-run") == "complete"


def test_non_finite_warning_is_once_per_checkpoint_and_only_for_it(user_files, caplog):
    f = user_files
    clean = dict(f["state_a"])
    nan = {k: v.clone() for k, v in f["state_b"].items()}
    nan["norm.running_var"][0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        check_pair(clean, nan)
        check_pair(clean, nan)  # the same pair again (a trajectory's first step): no repeat
        check_pair(nan, nan)  # one checkpoint on both sides: still reported once
    messages = _non_finite_warnings(caplog.text)
    assert len(messages) == 1 and "checkpoint b has non-finite values in norm (1 of 24 NaN/Inf)" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="layerlmc"):
        check_pair(clean, dict(clean))
    assert not _non_finite_warnings(caplog.text)


# -- 4. config: unknown keys, wrong types, values out of range ------------------------------------

CONFIG_FAULTS = [
    (TrainConfig, {"optimzer": {"lr": 0.1}}, "unknown config key 'optimzer' (did you mean 'optimizer'?)"),
    (TrainConfig, {"schedule": {"nmae": "cosine"}}, "unknown config key 'schedule.nmae'"),
    (TrainConfig, {"epochs": "many"}, "config key 'epochs'"),
    (TrainConfig, {"epochs": -3}, "config key 'epochs'"),
    (TrainConfig, {"epochs": 0}, "config key 'epochs'"),
    (TrainConfig, {"batch_size": 2.5}, "config key 'batch_size'"),
    (TrainConfig, {"optimizer": {"lr": 0}}, "config key 'optimizer.lr'"),
    (TrainConfig, {"optimizer": {"lr": -0.1}}, "config key 'optimizer.lr'"),
    (TrainConfig, {"optimizer": {"lr": float("inf")}}, "config key 'optimizer.lr'"),
    (TrainConfig, {"optimizer": {"lr": float("nan")}}, "config key 'optimizer.lr'"),
    (TrainConfig, {"optimizer": {"momentum": 1.0}}, "config key 'optimizer.momentum'"),
    (TrainConfig, {"optimizer": {"betas": [0.9, 1.5]}}, "config key 'optimizer.betas.1'"),
    (TrainConfig, {"optimizer": "adam"}, "config key 'optimizer'"),
    (TrainConfig, {"schedule": {"milestones": [-1, 5]}}, "config key 'schedule.milestones.0'"),
    (TrainConfig, {"runs": 0}, "config key 'runs'"),
    (TrainConfig, {"init_seed": -1}, "config key 'init_seed'"),
    (TrainConfig, {"order_seeds": [1, 2**70]}, "config key 'order_seeds.1'"),
    (TrainConfig, {"name": ""}, "config key 'name'"),
    (TrainConfig, {"augment": {"crop_padding": -2}}, "config key 'augment.crop_padding'"),
    (TrainConfig, {"model": {"args": {"width": b"\xff"}}}, "config key 'model.args'"),
    (FederatedConfig, {"fraction": 1.5}, "config key 'fraction'"),
    (FederatedConfig, {"fraction": 0}, "config key 'fraction'"),
    (FederatedConfig, {"clients": 0}, "config key 'clients'"),
    (FederatedConfig, {"rounds": -1}, "config key 'rounds'"),
    (FederatedConfig, {"seed": -1}, "config key 'seed'"),
    (FederatedConfig, {"partition": {"seed": -1}}, "config key 'partition.seed'"),
    (FederatedConfig, {"partition": {"alpha": 0}}, "config key 'partition.alpha'"),
    (FederatedConfig, {"partition": {"test_fraction": 1}}, "config key 'partition.test_fraction'"),
    (FederatedConfig, {"aggregate": {"strategy": "median"}}, "config key 'aggregate.strategy'"),
    (FederatedConfig, {"epochs": 3}, "unknown config key 'epochs'"),
]


@pytest.mark.parametrize(("cls", "mapping", "message"), CONFIG_FAULTS,
                         ids=[f"{c.__name__}-{json.dumps(m, default=repr)}" for c, m, _ in CONFIG_FAULTS])
def test_config_fault_names_the_key(cls, mapping, message):
    with pytest.raises(LayerLMCError) as err:
        load_config(cls, mapping)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("command", "text", "message"), [
    ("train", "epochs: -1\n", "config key 'epochs'"),
    ("train", "optimizer:\n  lr: .inf\n", "config key 'optimizer.lr'"),
    ("train", "optimizer: {lr: 0}\n", "config key 'optimizer.lr'"),
    ("train", "epochs: [1, 2]\nbogus: 3\n", "config key"),
    ("federate", "fraction: 1.5\n", "config key 'fraction'"),
    ("federate", "clients: 0\n", "config key 'clients'"),
    ("federate", "partition: {sheme: iid}\n", "did you mean 'scheme'"),
    # files that are not configs at all
    ("train", "- epochs\n- 3\n", "must hold a mapping"),
    ("train", "[]\n", "must hold a mapping"),
    ("train", "epochs: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ("train", "a: &a [*a]\n", "config key 'a.0' contains itself"),
    ("train", "model: {args: &a {x: *a}}\n", "config key 'model.args.x' contains itself"),
    ("train", "model:\n  args:\n    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
              + "".join(f"    {n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
     "config key 'model.args"),
    ("train", "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("train", b"epochs: 3\n\xff\xfe\x00", "not UTF-8"),
])
def test_config_fault_through_the_cli(tmp_path, capsys, monkeypatch, command, text, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    _fails(capsys, [command, str(config), "--out", str(tmp_path / "run")], message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "pwned").exists()


# -- 5. a corrupted last line of points.jsonl -----------------------------------------------------

@pytest.mark.parametrize("damage", [b'{"step": null, "loss": 0.1', b"\xff\xfe\x00 not utf-8 \x00", b"[" * 100000])
def test_corrupted_last_points_line_is_recomputed_like_a_clean_run(user_files, capsys, damage):
    f = user_files
    clean, damaged = f["dir"] / "clean", f["dir"] / "damaged"
    assert main(_quick(f, clean)) == 0
    assert main(_quick(f, damaged)) == 0
    points = damaged / "points.jsonl"
    lines = points.read_bytes().splitlines(keepends=True)
    points.write_bytes(b"".join(lines[:-1]) + damage + b"\n")
    capsys.readouterr()
    assert main(_quick(f, damaged)) == 0
    err = capsys.readouterr().err
    assert f"line {len(lines)} is not a complete record; it will be recomputed" in err
    assert "error" not in err
    assert _records(damaged) == _records(clean)
    assert (damaged / "points.jsonl.corrupt").read_bytes() == damage + b"\n"
    assert (damaged / "barriers.csv").read_text() == (clean / "barriers.csv").read_text()
    assert _status(damaged) == "complete"


# -- 6. disk full, read-only output folder ---------------------------------------------------------

class FullDisk:
    """Stands in for ``open`` inside :mod:`layerlmc.core.records`: the disk fills up after
    ``appends`` appends to ``points.jsonl``; from then on every write stops half-way with
    ENOSPC (so a half-written line is left unless the writer cleans up)."""

    def __init__(self, appends: int):
        self.appends_left = appends
        self.full = False

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        if not set(mode) & set("wax+"):
            return handle
        if Path(file).name == "points.jsonl" and "a" in mode:
            self.full = self.full or self.appends_left == 0
            self.appends_left -= 1
        return _Filling(handle, self)


class _Filling:
    def __init__(self, handle, disk: FullDisk):
        self.handle, self.disk = handle, disk

    def write(self, data):
        if not self.disk.full:
            return self.handle.write(data)
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_mid_run_leaves_whole_lines_and_a_rerun_finishes(user_files, capsys, monkeypatch):
    f = user_files
    clean, out = f["dir"] / "clean", f["dir"] / "full"
    assert main(_quick(f, clean)) == 0
    disk = FullDisk(appends=3)
    monkeypatch.setattr(results, "open", disk, raising=False)
    _fails(capsys, _quick(f, out), "cannot write", "points.jsonl", "No space left on device", "rerun")
    assert disk.full
    assert _status(out) != "complete"
    assert 0 < len(_whole_lines(out / "points.jsonl")) < len(_records(clean))
    assert not (out / "barriers.csv").exists()
    assert not list(out.glob("*.tmp"))
    monkeypatch.setattr(results, "open", builtins.open, raising=False)
    assert main(_quick(f, out)) == 0
    assert _records(out) == _records(clean)
    assert (out / "barriers.csv").read_text() == (clean / "barriers.csv").read_text()
    assert _status(out) == "complete"


def test_disk_full_while_saving_a_figure_is_one_line_and_leaves_no_half_figure(user_files, capsys, monkeypatch):
    f = user_files
    out = f["dir"] / "figures_full"
    from matplotlib.figure import Figure

    def no_space(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", no_space)
    _fails(capsys, _args(f, out, "--splits", "test"), "cannot write figure", "No space left on device")
    assert _status(out) != "complete"
    assert not list((out / "figures").iterdir())  # neither a figure nor its temporary file
    monkeypatch.undo()
    assert main(_args(f, out, "--splits", "test")) == 0
    assert _status(out) == "complete" and list((out / "figures").glob("*.png"))


def test_failed_fsync_rolls_back_the_append_and_marks_the_run_failed(user_files, capsys, monkeypatch):
    f = user_files
    clean, out = f["dir"] / "clean", f["dir"] / "nosync"
    assert main(_quick(f, clean)) == 0
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _fails(capsys, _quick(f, out), "cannot write", "points.jsonl", "No space left on device")
    assert _status(out) == "failed"
    assert len(_whole_lines(out / "points.jsonl")) == 2  # the two appends that reached the disk
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(_quick(f, out)) == 0
    assert _records(out) == _records(clean)
    assert _status(out) == "complete"


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_resumes(tiny_fmnist, tmp_path, capsys, monkeypatch):
    config = tmp_path / "pair.yaml"
    config.write_text("name: pair\nruns: 1\n")
    clean, out = tmp_path / "clean", tmp_path / "full"
    assert main(["train", str(config), *TINY, "--out", str(clean)]) == 0
    real_save = checkpoints.save_file
    calls = {"n": 0}

    def save_until_full(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints, "save_file", save_until_full)
    capsys.readouterr()
    _fails(capsys, ["train", str(config), *TINY, "--out", str(out)],
           "cannot write checkpoint", "epoch_0002.safetensors", "No space left on device")
    assert _status(out) == "failed"
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoints" / "a" / "epoch_0002.safetensors").exists()
    monkeypatch.setattr(checkpoints, "save_file", real_save)
    assert main(["train", str(config), *TINY, "--out", str(out)]) == 0
    final = "checkpoints/a/epoch_0002.safetensors"
    resumed, reference = load_state_dict(out / final), load_state_dict(clean / final)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert _status(out) == "complete"


class ReadOnly:
    """``open`` inside :mod:`layerlmc.core.records` on a read-only file system."""

    def __call__(self, file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return builtins.open(file, mode, *args, **kwargs)


def test_read_only_output_folder_is_one_error_line(user_files, capsys, monkeypatch):
    f = user_files
    fresh, done = f["dir"] / "fresh", f["dir"] / "done"
    assert main(_quick(f, done)) == 0
    before = {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()}
    monkeypatch.setattr(results, "open", ReadOnly(), raising=False)
    _fails(capsys, _quick(f, fresh), "cannot write", "Read-only file system", "choose another output folder")
    assert _status(fresh) is None and not (fresh / "points.jsonl").exists()
    # a finished folder asked for more points: refused before anything changes
    _fails(capsys, _quick(f, done, "--cumulative", "deep"), "Read-only file system")
    assert {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()} == before
    monkeypatch.setattr(results, "open", builtins.open, raising=False)
    assert main(_quick(f, fresh)) == 0
    assert _records(fresh) == _records(done)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_folder_by_permissions_is_one_error_line(user_files, capsys):
    f = user_files
    out = f["dir"] / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        _fails(capsys, _quick(f, out), str(out))
        assert not (out / "points.jsonl").exists()
    finally:
        out.chmod(0o755)


# -- 7. fuzzing the config loader and the checkpoint loader --------------------------------------

def _field_names(cls) -> set[str]:
    names = set()
    for name, field in cls.model_fields.items():
        names.add(name)
        inner = field.annotation
        if isinstance(inner, type) and hasattr(inner, "model_fields"):
            names |= _field_names(inner)
    return names


def _leaf_paths(tree: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in tree.items():
        paths += _leaf_paths(value, (*prefix, key)) if isinstance(value, dict) and value else [(*prefix, key)]
    return paths


FIELD_NAMES = sorted(_field_names(TrainConfig) | _field_names(FederatedConfig))
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.text(max_size=12), st.binary(max_size=6),
    st.sampled_from(["sgd", "adamw", "cosine", "multistep", "dirichlet", "round-robin", "cnn", "mlp", "module",
                     "train", "ray", "local", "0.5", "1e-3", "[1, 2]", "{lr: 1}"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=10)
CONFIG_CLASSES = st.sampled_from([TrainConfig, FederatedConfig])


def _loads_or_refuses(cls, source, overrides=()):
    """load_config gives a config that can be stored, or a LayerLMCError; nothing else."""
    try:
        config = load_config(cls, source, overrides)
    except LayerLMCError as err:
        assert str(err).strip()
        return None
    assert isinstance(config, cls)
    yaml.safe_dump(to_dict(config))  # what every run writes to config.yaml
    return config


@FUZZ
@given(cls=CONFIG_CLASSES, mapping=st.dictionaries(KEYS, VALUES, max_size=6))
def test_fuzz_config_loader_random_mappings(cls, mapping):
    _loads_or_refuses(cls, mapping)


@FUZZ
@given(cls=CONFIG_CLASSES, edits=st.lists(st.tuples(st.data(), VALUES), max_size=3),
       overrides=st.lists(st.one_of(st.text(max_size=20),
                                    st.builds("{}={}".format, st.sampled_from(FIELD_NAMES), st.text(max_size=10))),
                          max_size=3))
def test_fuzz_config_loader_near_valid_configs(cls, edits, overrides):
    """A valid config with a few leaves set to random values, then random overrides."""
    raw = copy.deepcopy(to_dict(cls()))
    paths = _leaf_paths(raw)
    for data, value in edits:
        path = data.draw(st.sampled_from(paths))
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    _loads_or_refuses(cls, raw, overrides)


@FUZZ
@given(cls=CONFIG_CLASSES, text=st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda m: yaml.safe_dump(m, default_flow_style=None), st.dictionaries(KEYS, VALUES, max_size=6)),
))
def test_fuzz_config_loader_random_files(tmp_path_factory, cls, text):
    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    _loads_or_refuses(cls, path)


def _fuzz_state():
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3), "bn.running_var": torch.rand(3),
            "bn.num_batches_tracked": torch.tensor(5), "half": torch.randn(2).half()}


@pytest.fixture(scope="module")
def seed_checkpoints(tmp_path_factory) -> tuple[dict[str, tuple[str, bytes]], Path]:
    """Valid checkpoints of every form we read, and pickles that would run code if loaded."""
    folder = tmp_path_factory.mktemp("seeds")
    marker = folder / "pwned"
    state = _fuzz_state()
    made = {}

    def keep(name, suffix, write):
        path = folder / f"{name}{suffix}"
        write(path)
        made[name] = (suffix, path.read_bytes())

    keep("safetensors", ".safetensors", lambda p: save_state_dict(state, p))
    keep("zip", ".pt", lambda p: torch.save(state, p))
    keep("nested", ".pth", lambda p: torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in state.items()}}, p))
    keep("legacy", ".bin", lambda p: torch.save(state, p, _use_new_zipfile_serialization=False))
    keep("exploit-zip", ".pt", lambda p: torch.save({**state, "x": Exploit(marker)}, p))
    keep("exploit-legacy", ".pt", lambda p: torch.save({**state, "x": Exploit(marker)}, p,
                                                         _use_new_zipfile_serialization=False))
    keep("exploit-pickle", ".pt", lambda p: p.write_bytes(pickle.dumps({**state, "x": Exploit(marker)}, protocol=2)))
    return made, marker


def _loads_tensors_or_refuses(path: Path, marker: Path) -> None:
    try:
        state = load_state_dict(path)
    except LayerLMCError as err:
        assert str(err).strip()
    else:
        assert isinstance(state, dict)
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    assert not marker.exists(), "a checkpoint ran code"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".pt", ".pth", ".bin", ".safetensors", ".ckpt"]))
def test_fuzz_checkpoint_loader_random_bytes(seed_checkpoints, data, suffix):
    folder = seed_checkpoints[1].parent
    path = folder / f"random{suffix}"
    path.write_bytes(data)
    _loads_tensors_or_refuses(path, seed_checkpoints[1])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@FUZZ
@given(data=st.data(), flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 2**20)))
def test_fuzz_checkpoint_loader_damaged_files(seed_checkpoints, data, flips, cut):
    made, marker = seed_checkpoints
    name = data.draw(st.sampled_from(sorted(made)))
    suffix, original = made[name]
    damaged = bytearray(original)
    for position, mask in flips:
        damaged[position % len(damaged)] ^= mask
    if cut is not None:
        damaged = damaged[: cut % len(damaged)]
    path = marker.parent / f"damaged{suffix}"
    path.write_bytes(bytes(damaged))
    _loads_tensors_or_refuses(path, marker)


# -- 8. found on the way: files that broke the loader before --------------------------------------

@pytest.mark.parametrize("order", ["5", '{"a": 1}', "[1, 2]", '["fc.bias"]', "[" * 100000, "not json"])
def test_safetensors_with_foreign_key_order_metadata_loads(tmp_path, order):
    """Another tool's file may use our order metadata key for something else: the keys keep
    the file's own order rather than the load failing."""
    state = _fuzz_state()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "x.safetensors"),
              metadata={ORDER_METADATA: order})
    loaded = load_state_dict(tmp_path / "x.safetensors")
    assert sorted(loaded) == sorted(state)


def test_self_referencing_checkpoint_is_refused(tmp_path):
    """A pickle may build a dict that holds itself: looking for the weights must end."""
    blob: dict = {"epoch": 1}
    blob["state_dict"] = blob
    blob["model"] = {"model": blob}
    torch.save(blob, tmp_path / "loop.pt")
    with pytest.raises(LayerLMCError, match="no state dict found"):
        load_state_dict(tmp_path / "loop.pt")
    deep: dict = {"w": torch.zeros(1)}
    for _ in range(300):
        deep = {"model": deep, "epoch": 1}
    torch.save(deep, tmp_path / "deep.pt")
    with pytest.raises(LayerLMCError, match="no state dict found"):
        load_state_dict(tmp_path / "deep.pt")

