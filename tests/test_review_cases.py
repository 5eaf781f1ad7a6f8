"""Cases found by an independent review: each was a crash, a traceback or a wrong output."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

import layerlmc
from layerlmc.cli.main import main
from layerlmc.core.checkpoints import load_state_dict, strip_wrapper_prefixes
from layerlmc.core.groups import layer_groups
from layerlmc.core.paths import parse_alphas
from layerlmc.errors import LayerLMCError

from .test_cli import _args, _fails


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4, bias=False)
        self.mid = nn.Linear(4, 3)
        self.out = nn.Linear(3, 4, bias=False)
        self.out.weight = self.embed.weight  # tied: [4, 3] both

    def forward(self, x):
        return self.out(torch.relu(self.mid(self.embed(x))))


def _data(n=20, classes=4, features=3):
    g = torch.Generator().manual_seed(0)
    return {"test": (torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))}


def test_tied_weights_evaluate():
    torch.manual_seed(0)
    a = TiedNet().state_dict()
    torch.manual_seed(1)
    b = TiedNet().state_dict()
    table = layerlmc.barriers(TiedNet(), a, b, _data(), cumulative="shallow", progress=False)
    assert set(table["group"]) == {"full", "embed", "mid"}
    assert table["value"].notna().all()


def test_package_module_specs(user_files, capsys):
    torch.save(layerlmc.models.mlp(in_features=4).state_dict(), user_files["dir"] / "m.pt")
    assert main(["groups", str(user_files["dir"] / "m.pt"), "--model", "layerlmc.models:mlp",
                 "--model-arg", "in_features=4"]) == 0
    assert "fc2" in capsys.readouterr().out


def test_user_code_failures_are_one_line(user_files, capsys, tmp_path):
    f = user_files
    (tmp_path / "bad_data.py").write_text(
        "import torch\n"
        "def as_dict():\n    return {'test': {'x': torch.zeros(3, 4), 'y': torch.zeros(3, dtype=torch.long)}}\n"
        "def wrong_shape():\n    return {'test': (torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))}\n"
        "def bare():\n    return {'test': torch.zeros(3, 4)}\n"
        "def multiline(n='x'):\n    raise ValueError('first line\\nsecond line\\nthird')\n"
    )
    for func, fragment in (("as_dict", "must be an (inputs, labels) pair"),
                           ("wrong_shape", "the model failed on split 'test'"),
                           ("bare", "must be an (inputs, labels) pair"),
                           ("multiline", "first line")):
        args = _args(f, tmp_path / func)
        args[args.index("--data") + 1] = f"{tmp_path / 'bad_data.py'}:{func}"
        _fails(capsys, args, fragment)


def test_model_failing_midway_keeps_config(user_files, capsys, tmp_path):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out)) == 0
    capsys.readouterr()
    config = (out / "config.yaml").read_text()
    (tmp_path / "flaky.py").write_text(
        "import torch\n"
        f"exec(open({str(f['model'])!r}).read())\n"
        "class Flaky(Net):\n"
        "    def forward(self, x):\n"
        "        if x.shape[0] == 1:\n            raise RuntimeError('boom')\n"
        "        return super().forward(x)\n"
        "def make():\n    return Flaky()\n"
    )
    args = _args(f, out, "--cumulative", "deep", "--data-arg", "n_test=25")
    args[args.index("--model") + 1] = f"{tmp_path / 'flaky.py'}:make"
    # the data differ (n_test), so the folder is refused before anything runs
    _fails(capsys, args, "holds results computed with another", "data")
    args[args.index("--out") + 1] = str(tmp_path / "flaky-run")
    _fails(capsys, args, "the model failed", "boom")
    assert json.loads((tmp_path / "flaky-run" / "run.json").read_text())["status"] == "failed"
    assert (out / "config.yaml").read_text() == config


def test_repeated_values_do_not_duplicate(user_files, capsys):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out, "--definition", "max,max", "--reference", "path", "--reference", "path",
                      "--bases", "a,a", "--cumulative", "deep", "--cumulative", "deep")) == 0
    lines = (out / "points.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    table = pd.read_csv(out / "barriers.csv")
    assert not table.duplicated().any()
    assert set(table["base"].dropna()) == {"a"}


def test_prefixes_and_garbage(tmp_path):
    state = {"module.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    assert strip_wrapper_prefixes(state) == state  # a submodule called `module` is kept
    wrapped = {"module._orig_mod.a": torch.zeros(1), "module._orig_mod.b": torch.zeros(1)}
    assert list(strip_wrapper_prefixes(wrapped)) == ["a", "b"]
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(LayerLMCError, match="cannot read checkpoint") as err:
        load_state_dict(tmp_path / "noise.pt")
    assert "needs code" not in str(err.value)


def test_changing_only_the_seed_or_adding_orders_reuses_the_folder(user_files, capsys):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out)) == 0
    assert main(_args(f, out, "--seed", "3", "--cumulative", "random")) == 0
    capsys.readouterr()
    _fails(capsys, _args(f, out, "--groups", "param"), "another grouping")


def test_torn_last_line_is_repaired(user_files, capsys):
    f = user_files
    out = f["dir"] / "run"
    assert main(_args(f, out, "--splits", "test")) == 0
    text = (out / "points.jsonl").read_text()
    lines = text.splitlines()
    (out / "points.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    capsys.readouterr()
    assert main(_args(f, out, "--splits", "test")) == 0
    assert "not a complete record" in capsys.readouterr().err
    repaired = (out / "points.jsonl").read_text().splitlines()
    assert len(repaired) == len(lines)
    assert all(json.loads(line) for line in repaired)  # valid JSON Lines again
    assert (out / "points.jsonl.corrupt").is_file()
    capsys.readouterr()
    assert main(_args(f, out, "--splits", "test")) == 0
    assert "not a complete record" not in capsys.readouterr().err


def test_small_edges():
    state = {"a.weight": torch.zeros(1), "bn.num_batches_tracked": torch.tensor(1), "b.weight": torch.zeros(1)}
    assert [g.name for g in layer_groups(state, "regex", ["b\\."])] == ["b\\.", "rest"]
    with pytest.raises(LayerLMCError, match="capture group"):
        layer_groups(state, "block", ["x"])
    with pytest.raises(LayerLMCError, match="not a finite number"):
        parse_alphas("0,0.5,inf", extrapolate=True)
    paths = layerlmc.plan_paths(state, groups="param")
    assert "bn.num_batches_tracked" not in {p.group for p in paths}
