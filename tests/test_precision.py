"""``precision``: forward passes under bf16/fp16 autocast, fp32 exactly as before, and the
precision an input of stored results."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from layerlmc.cli.main import main
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.core.plan import plan_paths
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate import EVALUATORS, Evaluator, EvaluatorSpec, Job, Split, make_evaluator
from layerlmc.evaluate.plain import precision_context
from layerlmc.evaluate.points import evaluate_paths
from layerlmc.models import cnn, mlp


def _cnn_case(bn: bool = False, n: int = 96):
    """A small CNN (optionally with a BatchNorm layer), two states of it and a split."""
    torch.manual_seed(0)
    model = cnn(width=4, hidden=16)
    if bn:
        model.conv1 = nn.Sequential(model.conv1, nn.BatchNorm2d(4))
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    b = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v.clone()
         for k, v in a.items()}
    if bn:
        for state, shift in ((a, 0.2), (b, -0.1)):
            state["conv1.1.running_mean"].fill_(shift)
            state["conv1.1.running_var"].fill_(1.0 + shift)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(n, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return model, a, b, {"test": Split("test", x, y)}


def _mlp_case(n: int = 256):
    torch.manual_seed(0)
    model = mlp(in_features=20, hidden=(32, 16), num_classes=5)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    b = {k: v + 0.1 * torch.randn_like(v) for k, v in a.items()}
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(n, 20, generator=generator)
    y = torch.randint(0, 5, (n,), generator=generator)
    return model, a, b, {"test": Split("test", x, y)}


def _sweep(evaluator, a, b, model) -> list[dict]:
    """The records of the standard sweep: endpoints, full midpoint, every group at ½, both bases."""
    paths = plan_paths(a, model, alphas="0,0.5,1")
    return evaluate_paths(evaluator, a, b, paths, progress=False)


def test_fp32_default_is_bit_identical_and_runs_no_autocast():
    model, a, b, splits = _cnn_case()
    seen = []
    model.fc1.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    for kind in ("plain", "incremental"):
        default = _sweep(make_evaluator(kind, model, splits, 32), a, b, model)
        explicit = _sweep(make_evaluator(kind, model, splits, 32, precision="fp32"), a, b, model)
        assert default == explicit  # every loss and accuracy, to the last bit
    assert seen and not any(seen)


@pytest.mark.parametrize("kind", [k for k in EVALUATORS if k != "plain"] + ["plain"])
def test_every_forward_pass_runs_under_autocast(kind):
    """Whichever entry point runs the model (check, evaluate, evaluate_many, prepare), and
    whichever path an evaluator takes (incremental nodes, vmap), the layers see autocast."""
    model, a, b, splits = _mlp_case(n=64)
    seen = []
    model.fc2.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    evaluator = make_evaluator(kind, model, splits, 32, precision="bf16")
    evaluator.check(a)
    evaluator.evaluate(a, "test")
    changed = frozenset(k for k in a if k.startswith("head."))
    mixed = {**a, **{k: b[k] for k in changed}}
    evaluator.evaluate_many([Job(mixed, a, changed), Job(b, a, frozenset(a))], "test")
    assert seen and set(seen) == {(True, torch.bfloat16)}
    assert not torch.is_autocast_enabled("cpu")  # and nothing is left switched on


@pytest.mark.parametrize("case", [_cnn_case, _mlp_case])
def test_bf16_is_finite_and_close_to_fp32(case):
    model, a, b, splits = case()
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        evaluator = make_evaluator("plain", model, splits, 64, precision=precision)
        records = _sweep(evaluator, a, b, model)
        assert all(math.isfinite(r["loss"]) for r in records)
        results[precision] = records
    for precision in ("bf16", "fp16"):
        for low, full in zip(results[precision], results["fp32"]):
            assert low["loss"] == pytest.approx(full["loss"], rel=0.03)
            assert abs(low["accuracy"] - full["accuracy"]) <= 0.05
    # lower precision does change the numbers: that is why it is an input of stored results
    assert [r["loss"] for r in results["bf16"]] != [r["loss"] for r in results["fp32"]]


def test_plain_and_incremental_agree_under_bf16():
    model, a, b, splits = _cnn_case()
    plain = _sweep(make_evaluator("plain", model, splits, 32, precision="bf16"), a, b, model)
    incremental = make_evaluator("incremental", model, splits, 32, precision="bf16")
    incremental.check(a)
    assert incremental.incremental  # the traced graph passed its check under autocast too
    for got, expected in zip(_sweep(incremental, a, b, model), plain):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
        assert got["accuracy"] == expected["accuracy"]


def test_batchnorm_recompute_under_bf16():
    model, a, b, splits = _cnn_case(bn=True)
    batches = [splits["test"].inputs[:32], splits["test"].inputs[32:64]]
    prepared, metrics = {}, {}
    for precision in ("fp32", "bf16"):
        evaluator = Evaluator(model, splits, 32, bn="recompute", bn_batches=batches,
                              precision=precision)
        prepared[precision] = evaluator.prepare(a)
        metrics[precision] = evaluator.evaluate(prepared[precision], "test")
        assert model.training is False  # modes restored
    low, full = prepared["bf16"], prepared["fp32"]
    # the statistics stay float32 buffers, estimated from bf16 activations
    assert low["conv1.1.running_mean"].dtype == torch.float32
    assert not torch.equal(full["conv1.1.running_mean"], a["conv1.1.running_mean"])
    assert torch.allclose(low["conv1.1.running_mean"], full["conv1.1.running_mean"], atol=0.02)
    assert torch.allclose(low["conv1.1.running_var"], full["conv1.1.running_var"], rtol=0.03)
    assert math.isfinite(metrics["bf16"].loss)
    assert metrics["bf16"].loss == pytest.approx(metrics["fp32"].loss, rel=0.03)


def test_unknown_precision_and_unavailable_device_are_clear_errors():
    model, _, _, splits = _mlp_case(n=8)
    with pytest.raises(LayerLMCError, match=r"unknown precision 'bf8'.*fp32, bf16, fp16"):
        Evaluator(model, splits, precision="bf8")
    with pytest.raises(LayerLMCError, match="unknown precision"):
        make_evaluator("incremental", model, splits, precision="half")
    # fp16 autocast exists on the CPU in this torch: allowed
    assert make_evaluator("plain", model, splits, precision="fp16").precision == "fp16"
    if not torch.cuda.is_available():
        with pytest.raises(LayerLMCError, match="--precision bf16 is not available on device cuda"):
            precision_context("bf16", torch.device("cuda"))


def test_spec_rebuilds_the_same_precision():
    model, _, _, splits = _mlp_case(n=8)
    spec = EvaluatorSpec("auto", model, splits, 4, precision="bf16").to("cpu")
    built = spec.build()
    assert built.precision == "bf16" and built.vmap.precision == "bf16"


def _fails(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("layerlmc: error: ")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _barriers(f, out, *extra):
    return ["barriers", str(f["a"]), str(f["b"]), "--model", f"{f['model']}:make_net",
            "--data", f"{f['data']}:make_splits", "--out", str(out), "--batch-size", "8",
            "--no-plots", *extra]


def test_cli_precision_is_an_input_of_the_folder(user_files, capsys):
    f = user_files
    _fails(capsys, _barriers(f, f["dir"] / "bad", "--precision", "fp8"),
           "--precision", "fp32", "bf16", "fp16")
    out = f["dir"] / "run"
    assert main(_barriers(f, out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["precision"] == "fp32"
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "fp32"
    capsys.readouterr()
    _fails(capsys, _barriers(f, out, "--precision", "bf16"),
           "holds results computed with another precision")
    # a folder from before precision was recorded was computed in fp32: it continues in fp32
    del run["inputs"]["precision"]
    (out / "run.json").write_text(json.dumps(run))
    _fails(capsys, _barriers(f, out, "--precision", "bf16"), "another precision")
    assert main(_barriers(f, out, "--precision", "fp32")) == 0
    # a bf16 folder of its own works, with its numbers recorded as bf16
    low = f["dir"] / "bf16"
    assert main(_barriers(f, low, "--precision", "bf16", "--evaluator", "incremental",
                          "--bn", "recompute")) == 0
    assert json.loads((low / "run.json").read_text())["inputs"]["precision"] == "bf16"
    assert yaml.safe_load((low / "config.yaml").read_text())["precision"] == "bf16"


def test_trajectory_and_robustness_take_precision(user_files, capsys):
    f = user_files
    for side, state in (("a", f["state_a"]), ("b", f["state_b"])):
        (f["dir"] / side).mkdir()
        for step in (0, 1):
            moved = {k: v + 0.01 * step if v.is_floating_point() else v for k, v in state.items()}
            save_state_dict(moved, f["dir"] / side / f"epoch_{step}.safetensors")
    common = ["--model", f"{f['model']}:make_net", "--data", f"{f['data']}:make_splits",
              "--batch-size", "8", "--no-plots", "--precision", "bf16"]
    runs = {
        "trajectory": ["trajectory", str(f["dir"] / "a"), "--b", str(f["dir"] / "b"),
                       "--out", str(f["dir"] / "traj"), "--layers", "head", *common],
        "robustness": ["robustness", str(f["a"]), "--b", str(f["b"]), "--samples", "1",
                       "--layers", "head", "--out", str(f["dir"] / "rob"), *common],
    }
    for name, argv in runs.items():
        assert main(argv) == 0, name
        out = f["dir"] / ("traj" if name == "trajectory" else "rob")
        assert json.loads((out / "run.json").read_text())["inputs"]["precision"] == "bf16"
        assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "bf16"
    capsys.readouterr()
    _fails(capsys, [*runs["robustness"][:-2], "--precision", "fp32"], "another precision")
