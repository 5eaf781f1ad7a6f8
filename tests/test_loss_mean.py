"""--loss-mean example|batch: the paper's code averages per-batch means; layerlmc's default is the
mean per example. Both, with every evaluator, and the choice as an input of a run folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import layerlmc
from layerlmc import EvalOptions
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate.options import build_evaluator
from layerlmc.models import mlp


def _setup():
    torch.manual_seed(0)
    model = mlp(in_features=5, hidden=[6], num_classes=3)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    b = mlp(in_features=5, hidden=[6], num_classes=3).state_dict()
    generator = torch.Generator().manual_seed(3)
    # 23 examples in batches of 8: the last batch holds 7
    data = {"test": (torch.randn(23, 5, generator=generator), torch.randint(0, 3, (23,), generator=generator))}
    return model, a, b, data


def _by_hand(model, state, data, batch_size):
    x, y = data["test"]
    with torch.no_grad():
        logits = torch.func.functional_call(model, state, (x,))
    per_example = F.cross_entropy(logits, y, reduction="none")
    batch_means = [per_example[i:i + batch_size].mean().item() for i in range(0, len(y), batch_size)]
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    return per_example.mean().item(), sum(batch_means) / len(batch_means), accuracy


@pytest.mark.parametrize("kind", ["plain", "incremental", "vmap"])
def test_batch_means_are_the_papers_and_differ_only_in_the_loss(kind):
    model, a, _, data = _setup()
    example, batch, accuracy = _by_hand(model, a, data, 8)
    assert abs(example - batch) > 1e-4  # the short last batch weighs more in the paper's mean
    for loss_mean, expected in (("example", example), ("batch", batch)):
        evaluator = build_evaluator(model, data, a, batch_size=8, device="cpu", evaluator=kind,
                                    loss_mean=loss_mean)
        metrics = evaluator.evaluate_many([layerlmc.evaluate.Job(a)], "test")[0]
        assert metrics.loss == pytest.approx(expected, rel=1e-6)
        assert metrics.accuracy == pytest.approx(accuracy) and metrics.n == 23


def test_the_loss_mean_is_an_input_of_the_folder(tmp_path):
    model, a, b, data = _setup()
    out = tmp_path / "ab"
    batch = layerlmc.barriers(model, a, b, data, out=out, batch_size=8, loss_mean="batch",
                              plots=False, progress=False)
    inputs = json.loads((out / "run.json").read_text())["inputs"]
    assert inputs["loss mean"] == "batch means of 8"
    with pytest.raises(LayerLMCError, match="another loss mean"):
        layerlmc.barriers(model, a, b, data, out=out, batch_size=8, plots=False, progress=False)
    example = layerlmc.barriers(model, a, b, data, batch_size=8, plots=False, progress=False,
                                evaluation=EvalOptions(batch_size=8))
    assert not batch["value"].equals(example["value"])


def test_a_folder_from_before_the_option_continues_in_per_example_means(tmp_path):
    model, a, b, data = _setup()
    out = tmp_path / "old"
    layerlmc.barriers(model, a, b, data, out=out, batch_size=8, plots=False, progress=False)
    run = json.loads((out / "run.json").read_text())
    del run["inputs"]["loss mean"]
    (out / "run.json").write_text(json.dumps(run))
    layerlmc.barriers(model, a, b, data, out=out, batch_size=8, plots=False, progress=False)
    with pytest.raises(LayerLMCError, match="another loss mean"):
        layerlmc.barriers(model, a, b, data, out=out, batch_size=8, loss_mean="batch",
                          plots=False, progress=False)


def test_an_unknown_loss_mean_is_one_error():
    model, a, _, data = _setup()
    with pytest.raises(LayerLMCError, match="unknown loss mean 'batches' \\(did you mean 'batch'\\?\\)"):
        build_evaluator(model, data, a, device="cpu", loss_mean="batches")


def test_the_command_takes_loss_mean(user_files, capsys):
    from layerlmc.cli.main import main

    from .test_cli import _args

    out = user_files["dir"] / "batch"
    assert main(_args(user_files, out, "--loss-mean", "batch", "--batch-size", "7")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["loss mean"] == "batch means of 7"
    assert "loss_mean: batch" in (out / "config.yaml").read_text()
    assert main(_args(user_files, out, "--loss-mean", "example", "--batch-size", "7")) != 0
    assert "another loss mean" in capsys.readouterr().err
