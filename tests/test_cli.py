"""The command line end to end on a user's own model file, data file and checkpoints."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from layerlmc.cli.main import main


def _args(f, out, *extra):
    return ["barriers", str(f["a"]), str(f["b"]), "--model", f"{f['model']}:make_net",
            "--data", f"{f['data']}:make_splits", "--out", str(out), "--batch-size", "8", *extra]


def _by_hand(f):
    """Loss/error of (1−α)·a + α·b on some keys, the rest from the base, written out plainly."""
    namespace = f["namespace"]
    model = namespace["make_net"]().eval()
    data = {}
    exec(open(f["data"]).read(), data)
    splits = data["make_splits"]()
    a, b = f["state_a"], f["state_b"]

    def metric(keys, alpha, base, split):
        state = {}
        for k in a:
            if k in keys and a[k].is_floating_point():
                state[k] = (1 - alpha) * a[k] + alpha * b[k]
            else:
                state[k] = (a if base == "a" else b)[k]
        x, y = splits[split]
        with torch.no_grad():
            logits = functional_call(model, state, (x,))
        return F.cross_entropy(logits, y).item(), 1 - (logits.argmax(1) == y).float().mean().item()

    return metric


def test_barriers_match_hand_computation(user_files, capsys):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out, "--cumulative", "deep", "--definition", "midpoint,max",
                      "--reference", "models", "--reference", "path")) == 0
    printed = capsys.readouterr().out
    assert "full" in printed and "norm" in printed and "deep +fc1" in printed
    table = pd.read_csv(out / "barriers.csv")
    metric = _by_hand(f)
    all_keys = set(f["state_a"])
    for split in ("train", "test"):
        loss_a, err_a = metric(set(), 0.0, "a", split)
        loss_b, err_b = metric(set(), 0.0, "b", split)
        # full path, midpoint, reference models
        loss_mid, err_mid = metric(all_keys, 0.5, "a", split)
        row = table.query("kind == 'full' and split == @split and definition == 'midpoint' and reference == 'models'")
        got = row.set_index("metric")["value"]
        assert got["loss"] == pytest.approx(loss_mid - (loss_a + loss_b) / 2, abs=1e-5)
        assert got["error"] == pytest.approx(err_mid - (err_a + err_b) / 2, abs=1e-5)
        # full path, max over the default 11-point grid
        gaps = [metric(all_keys, i / 10, "a", split)[0] - ((1 - i / 10) * loss_a + i / 10 * loss_b) for i in range(11)]
        row = table.query("kind == 'full' and split == @split and definition == 'max' and metric == 'loss' and reference == 'models'")
        assert row["value"].item() == pytest.approx(max(gaps), abs=1e-5)
        # every single group, both bases, midpoint against the full models and against its own ends
        for group in ("fc1", "norm", "fc2", "head"):
            keys = {k for k in all_keys if k.rsplit(".", 1)[0] == group}
            for base in ("a", "b"):
                mid = metric(keys, 0.5, base, split)[0]
                start, end = metric(keys, 0.0, base, split)[0], metric(keys, 1.0, base, split)[0]
                sel = table.query("kind == 'group' and group == @group and base == @base and split == @split "
                                  "and metric == 'loss' and definition == 'midpoint'").set_index("reference")["value"]
                assert sel["models"] == pytest.approx(mid - (loss_a + loss_b) / 2, abs=1e-5)
                assert sel["path"] == pytest.approx(mid - (start + end) / 2, abs=1e-5)
        # cumulative deep: head, then head+fc2
        keys = {k for k in all_keys if k.split(".")[0] in ("head", "fc2")}
        mid = metric(keys, 0.5, "b", split)[0]
        row = table.query("kind == 'cumulative' and group == 'fc2' and base == 'b' and split == @split "
                          "and metric == 'loss' and definition == 'midpoint' and reference == 'models'")
        assert row["value"].item() == pytest.approx(mid - (loss_a + loss_b) / 2, abs=1e-5)
    for name in ("config.yaml", "run.json", "points.jsonl", "barriers.csv"):
        assert (out / name).is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert {p.name for p in (out / "figures").glob("*.png")} == {
        "full_path.png", "layer_barriers.png", "cumulative_barriers.png"}


def test_max_of_group_paths_says_which_reference(user_files, capsys):
    f = user_files
    out = f["dir"] / "max"
    assert main(_args(f, out, "--definition", "max", "--alphas", "0,0.5,1", "--no-plots")) == 0
    printed = capsys.readouterr().out
    assert "reference: models (full path), path (group and cumulative paths)" in printed
    assert "note: max of group and cumulative paths is against the path's own ends" in printed
    table = pd.read_csv(out / "barriers.csv")
    assert set(table.loc[table["kind"] == "full", "reference"]) == {"models"}
    assert set(table.loc[table["kind"] == "group", "reference"]) == {"path"}
    # the same folder, asked for the whole-path max against the models: no new point
    lines = (out / "points.jsonl").read_text()
    assert main(_args(f, out, "--definition", "max", "--alphas", "0,0.5,1", "--no-plots",
                      "--reference", "models-swap")) == 0
    printed = capsys.readouterr().out
    assert "reference: models-swap" in printed and "the cost of a swap" in printed
    assert (out / "points.jsonl").read_text() == lines
    swapped = pd.read_csv(out / "barriers.csv")
    assert set(swapped["reference"]) == {"models"}
    assert main(_args(f, out, "--no-plots")) == 0  # midpoint: no note
    assert "note:" not in capsys.readouterr().out


def test_rerun_evaluates_nothing_twice(user_files, capsys, monkeypatch):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out, "--cumulative", "shallow")) == 0
    lines = (out / "points.jsonl").read_text().splitlines()
    keys = [tuple(json.loads(line)[k] for k in ("kind", "group", "base", "order", "alpha", "split")) for line in lines]
    assert len(keys) == len(set(keys))
    first = (out / "barriers.csv").read_text()
    from layerlmc.evaluate.plain import Evaluator

    calls = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, *a: calls.append(a) or original(self, *a))
    assert main(_args(f, out, "--cumulative", "shallow")) == 0
    assert calls == []
    assert (out / "points.jsonl").read_text().splitlines() == lines
    assert (out / "barriers.csv").read_text() == first
    # asking for more evaluates only the new points
    assert main(_args(f, out, "--cumulative", "shallow", "--cumulative", "deep")) == 0
    assert 0 < len(calls) < len(lines)


def test_same_state_is_evaluated_once(user_files, monkeypatch):
    from layerlmc.evaluate.plain import Evaluator

    f = user_files
    calls = []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, *a: calls.append(a) or original(self, *a))
    assert main(_args(f, f["dir"] / "r", "--alphas", "0,0.5,1", "--cumulative", "shallow", "--splits", "test")) == 0
    # endpoints (2) + full midpoint (1) + 4 groups × 2 bases at ½ (8) + shallow prefixes 2..3 × 2 bases (4);
    # prefix 1 equals group fc1, prefix 4 the full midpoint, α=0/1 points the endpoints
    assert len(calls) == 2 + 1 + 8 + 4


def _fails(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    # progress lines may come first; the problem itself is one line, and never a traceback
    errors = [line for line in err.splitlines() if line.startswith("layerlmc: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(line.startswith("layerlmc: ") for line in err.splitlines()), err
    err = errors[0]
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_inputs_get_one_line_and_keep_results(user_files, capsys, tmp_path):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.json"}

    args = _args(f, out)
    _fails(capsys, [*args[:1], str(f["dir"] / "missing.pt"), *args[2:]], "checkpoint not found", "missing.pt")
    torch.save({"w": torch.zeros(1), "fn": print}, tmp_path / "code.pt")
    _fails(capsys, [*args[:1], str(tmp_path / "code.pt"), *args[2:]], "refused to load", "needs code")
    other = {k: v for k, v in f["state_b"].items() if not k.startswith("head")}
    torch.save(other, tmp_path / "small.pt")
    _fails(capsys, [*args[:2], str(tmp_path / "small.pt"), *args[3:]], "do not match", "head.bias", "head.weight")
    _fails(capsys, [*_args(f, out), "--model-arg", "width=8"], "shape", "fc1.weight")
    _fails(capsys, [*_args(f, out), "--layers", "fc3"], "unknown layer group 'fc3'", "did you mean 'fc2'")
    _fails(capsys, [*_args(f, out), "--cumulative", "shalow"], "did you mean 'shallow'")
    _fails(capsys, [*_args(f, out), "--alphas", "0,1.5"], "outside [0, 1]", "--extrapolate")
    _fails(capsys, [*_args(f, out), "--definition", "maxx"], "did you mean 'max'")
    _fails(capsys, [*_args(f, out), "--bogus"], "No such option", "--bogus")
    _fails(capsys, [*_args(f, out), "--max-exampels", "3"], "--max-examples", "id you mean")
    _fails(capsys, [*_args(f, out), "--data-arg", "classes=5"], "labels range over", "3 classes")
    _fails(capsys, [*_args(f, out), "--data-arg", "n_test=0"], "split 'test' is empty")
    bad = _args(f, out)
    bad[bad.index("--model") + 1] = f"{f['model']}:make_nett"
    _fails(capsys, bad, "has no function 'make_nett'", "did you mean 'make_net'")
    bad[bad.index("--model") + 1] = "resnet"
    _fails(capsys, bad, "unknown model 'resnet'")
    bad = _args(f, out)
    bad[bad.index("--data") + 1] = "fashion-mnst"
    _fails(capsys, bad, "did you mean 'fashion-mnist'")
    # a different checkpoint pair into the same folder would mix results
    _fails(capsys, [*args[:1], str(f["b"]), *args[2:]], "holds results computed with another checkpoint a")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.json"}
    assert after == before


def test_non_finite_losses_are_recorded_and_flagged(user_files, capsys):
    f = user_files
    state = dict(f["state_b"])
    state["head.weight"] = torch.full_like(state["head.weight"], float("inf"))
    torch.save(state, f["dir"] / "inf.pt")
    args = _args(f, f["dir"] / "inf", "--splits", "test")
    args[2] = str(f["dir"] / "inf.pt")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nan!" in printed and "non-finite" in printed
    records = [json.loads(line) for line in (f["dir"] / "inf" / "points.jsonl").read_text().splitlines()]
    assert any(r["loss"] != r["loss"] for r in records)


def test_groups_and_ls_commands(user_files, capsys):
    f = user_files
    assert main(["groups", str(f["a"]), "--model", f"{f['model']}:make_net"]) == 0
    printed = capsys.readouterr().out
    assert "norm" in printed and "4 groups" in printed
    assert main(["ls", "models"]) == 0
    assert "cnn" in capsys.readouterr().out
    assert main(["ls", "datasets"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out


def test_console_script_runs(user_files):
    f = user_files
    result = subprocess.run([sys.executable, "-m", "layerlmc.cli.main", *_args(f, f["dir"] / "sub")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "barriers (midpoint" in result.stdout
    result = subprocess.run([sys.executable, "-m", "layerlmc.cli.main", "barriers", "x.pt"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_example_folder_runs(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "own_model"
    monkeypatch.syspath_prepend(str(example))
    import make_checkpoints

    make_checkpoints.main(tmp_path, epochs=1)
    assert main(["barriers", str(tmp_path / "A.pt"), str(tmp_path / "B.safetensors"),
                 "--model", f"{example / 'my_models.py'}:make_net", "--data", f"{example / 'my_data.py'}:make_splits",
                 "--out", str(tmp_path / "ab"), "--cumulative", "shallow", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "fc3" in printed and "shallow +fc2" in printed
