"""Permutation alignment (issue 13): specs of every zoo model, function preservation, recovery
of a known permutation, weight and activation matching, and --align as a stored input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import layerlmc
from layerlmc.cli.main import main
from layerlmc.core.checkpoints import save_state_dict
from layerlmc.core.permutations import (
    SpecError,
    SpecMismatch,
    apply_permutation,
    invert,
    permutation_spec,
    random_permutations,
    weight_matching,
)
from layerlmc.errors import LayerLMCError
from layerlmc.evaluate.alignment import AlignOptions, align_pair
from layerlmc.specs import build_model

IMAGE = (3, 1, 28, 28)
#: every zoo model with a spec, at a size that runs in milliseconds
SPECD = [
    ("mlp", {"hidden": [12, 10]}, IMAGE),
    ("cnn", {"width": 4, "hidden": 12}, IMAGE),
    ("deep-cnn", {"width": 4, "hidden": 12}, IMAGE),
    ("vgg11", {"width": 8, "in_channels": 1, "hidden": 12}, IMAGE),
    ("vgg11", {"width": 8, "in_channels": 1, "hidden": 12, "batch_norm": True}, IMAGE),
    ("vgg16", {"width": 8, "in_channels": 1, "hidden": 12}, IMAGE),
    ("resnet20", {"width": 4, "in_channels": 1, "norm": "batch"}, IMAGE),
    ("resnet20", {"width": 4, "in_channels": 1, "norm": "layer"}, IMAGE),
    ("resnet20", {"width": 4, "in_channels": 1, "norm": "none"}, IMAGE),
    ("resnet18", {"width": 4, "in_channels": 1, "norm": "batch"}, IMAGE),
    ("resnet18", {"width": 8, "in_channels": 1, "norm": "group"}, IMAGE),  # one channel per group
    ("mobilenet", {"width": 8, "in_channels": 1}, IMAGE),
    ("vit", {"dim": 16, "depth": 2, "heads": 4, "mlp_dim": 24}, IMAGE),
    ("char-gpt", {"vocab_size": 11, "block_size": 8, "dim": 16, "depth": 2, "heads": 4}, None),
    ("char-gpt", {"vocab_size": 11, "block_size": 8, "dim": 16, "depth": 2, "heads": 4,
                  "bias": True, "tie": True}, None),
]


def _inputs(shape):
    generator = torch.Generator().manual_seed(3)
    if shape is None:
        return torch.randint(0, 11, (3, 8), generator=generator)
    return torch.randn(*shape, generator=generator)


def _trained_state(model, x):
    """The model's state with non-trivial norm parameters and running statistics, so that
    permuting them is tested too."""
    torch.manual_seed(7)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.dim() == 1 and ("bn" in name or "norm" in name
                                                                    or "ln" in name or "downsample.1" in name):
                tensor.add_(0.3 * torch.randn_like(tensor))
        if any("running" in k for k in model.state_dict()):
            model.train()
            model(x)
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,kwargs,shape", SPECD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SPECD)])
def test_permuting_preserves_the_function_and_matching_recovers_it(name, kwargs, shape):
    torch.manual_seed(0)
    model = build_model(name, kwargs)
    x = _inputs(shape)
    state = _trained_state(model, x)
    spec = permutation_spec(model)
    assert spec, name
    perms = random_permutations(spec, seed=1)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted = apply_permutation(state, spec, perms)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    with torch.no_grad():
        model.load_state_dict(state)
        before = model(x)
        model.load_state_dict(permuted)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=0), (before - after).abs().max()
    # aligning the permuted copy to the original finds exactly the inverse permutation
    aligned, matching = align_pair(model, state, permuted, options=AlignOptions(align="weight"))
    assert matching.converged
    for group in spec:
        assert torch.equal(matching.perms[group.name], invert(perms[group.name])), group.name
    for key in state:
        assert torch.equal(aligned[key], state[key]), key


def test_an_aligned_copy_has_zero_barrier(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", {"in_features": 6, "hidden": [16, 8], "num_classes": 3})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = permutation_spec(model)
    permuted = apply_permutation(state, spec, random_permutations(spec, seed=4))
    generator = torch.Generator().manual_seed(0)
    data = {"test": (torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator))}
    unaligned = layerlmc.barriers(model, state, permuted, data, layerwise=False, plots=False)
    aligned = layerlmc.barriers(model, state, permuted, data, layerwise=False, align="weight",
                                out=tmp_path / "run", plots=False)
    full = lambda t: t[(t.kind == "full") & (t.metric == "loss")]["value"].item()
    assert full(unaligned) > 1e-4
    assert full(aligned) == pytest.approx(0.0, abs=1e-6)
    summary = json.loads((tmp_path / "run" / "alignment.json").read_text())
    assert summary[0]["converged"] and summary[0]["method"] == "weight"
    saved = layerlmc.load_state_dict(tmp_path / "run" / "permutations.safetensors")
    assert set(saved) == {g.name for g in spec}
    # a folder computed aligned refuses unaligned (and the reverse)
    with pytest.raises(LayerLMCError, match="alignment"):
        layerlmc.barriers(model, state, permuted, data, layerwise=False, out=tmp_path / "run", plots=False)


def test_git_rebasin_two_different_init_mlps():
    """Two MLPs from different initialisations on 4096 Fashion-MNIST images: weight matching
    removes most of the full barrier (git re-basin's qualitative result). A few seconds."""
    from layerlmc.data.fashion_mnist import fashion_mnist

    try:
        splits = fashion_mnist()
    except LayerLMCError as err:
        pytest.skip(f"Fashion-MNIST is not installed here: {err}")
    x, y = splits["train"][0][:4096].flatten(1), splits["train"][1][:4096]
    data = {"test": (splits["test"][0][:1024], splits["test"][1][:1024])}

    def train(seed):
        torch.manual_seed(seed)
        net = build_model("mlp", {"hidden": [128, 128]})
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(400):
            batch = torch.randint(0, len(x), (64,), generator=generator)
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return net, {k: v.detach().clone() for k, v in net.state_dict().items()}

    net, a = train(1)
    _, b = train(2)
    kwargs = {"layerwise": False, "alphas": "0:1:5", "plots": False}
    before = layerlmc.barriers(net, a, b, data, **kwargs)
    after = layerlmc.barriers(net, a, b, data, align="weight", **kwargs)
    full = lambda t: t[(t.kind == "full") & (t.metric == "loss")]["value"].item()
    assert full(before) > 0.1
    assert full(after) < 0.5 * full(before), (full(before), full(after))


def test_activation_matching_recovers_a_permutation_and_needs_data():
    torch.manual_seed(0)
    model = build_model("cnn", {"width": 4, "hidden": 12})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = permutation_spec(model)
    perms = random_permutations(spec, seed=2)
    permuted = apply_permutation(state, spec, perms)
    data = {"train": (torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))}
    _, matching = align_pair(model, state, permuted, data, AlignOptions(align="activation"))
    for group in spec:
        assert torch.equal(matching.perms[group.name], invert(perms[group.name])), group.name
    with pytest.raises(LayerLMCError, match="needs data"):
        align_pair(model, state, permuted, None, AlignOptions(align="activation"))
    vit = build_model("vit", {"dim": 8, "depth": 1, "heads": 2, "mlp_dim": 8})
    with pytest.raises(LayerLMCError, match="heads"):
        align_pair(vit, vit.state_dict(), vit.state_dict(), data, AlignOptions(align="activation"))


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


class _NoHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.fc(x).view(-1, 3, 2).flip(1).reshape(-1, 6))


def test_no_derivable_spec_is_one_line_naming_what():
    # channels of a GroupNorm with several channels per group may only move within their group
    with pytest.raises(SpecError, match="CifarResNet.*'layer1.0.bn1' .GroupNorm"):
        permutation_spec(build_model("resnet18", {"width": 8, "norm": "group", "groups": 2}))
    with pytest.raises(SpecError, match="_Untraceable: torch.fx cannot trace it") as err:
        permutation_spec(_Untraceable())
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="_NoHidden.*view"):
        permutation_spec(_NoHidden())


def test_inconsistent_shapes_and_non_converging_matching():
    model = build_model("mlp", {"in_features": 6, "hidden": [8], "num_classes": 3})
    spec = permutation_spec(model)
    other = build_model("mlp", {"in_features": 6, "hidden": [9], "num_classes": 3}).state_dict()
    with pytest.raises(SpecMismatch, match="fc1.weight.*axis 0 of length 8"):
        weight_matching(spec, model.state_dict(), other)
    torch.manual_seed(0)
    deep = build_model("mlp", {"in_features": 6, "hidden": [16, 16, 16], "num_classes": 3})
    state = {k: v.clone() for k, v in deep.state_dict().items()}
    deep_spec = permutation_spec(deep)
    permuted = apply_permutation(state, deep_spec, random_permutations(deep_spec, seed=0))
    stopped = weight_matching(deep_spec, state, permuted, max_rounds=1)
    assert stopped.rounds == 1 and not stopped.converged


def test_cli_align_and_barriers_align(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("mlp", {"in_features": 784, "hidden": [8], "num_classes": 10})
    a = save_state_dict(model.state_dict(), tmp_path / "A.safetensors")
    spec = permutation_spec(model)
    b = save_state_dict(apply_permutation(model.state_dict(), spec, random_permutations(spec, 3)),
                        tmp_path / "B.safetensors")
    out = tmp_path / "aligned.safetensors"
    assert main(["align", str(a), str(b), "--model", "mlp", "--model-arg", "hidden=[8]",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converged" in text and out.exists()
    assert (tmp_path / "aligned.permutations.safetensors").exists()
    assert torch.equal(layerlmc.load_state_dict(out)["fc1.weight"], model.state_dict()["fc1.weight"])
    assert main(["align", str(a), str(b), "--model", "mlp", "--model-arg", "hidden=[8]",
                 "--method", "activation", "--out", str(out)]) == 2
    assert "needs data" in capsys.readouterr().err


def _steps_of_permuted_copies(tmp_path, same_permutation: bool):
    """Checkpoints of a at steps 0, 1, 2 and of b = a permuted (per step, or one permutation)."""
    model = build_model("mlp", {"in_features": 6, "hidden": [10, 8], "num_classes": 3})
    spec = permutation_spec(model)
    for step in range(3):
        torch.manual_seed(step)
        state = build_model("mlp", {"in_features": 6, "hidden": [10, 8], "num_classes": 3}).state_dict()
        perms = random_permutations(spec, seed=0 if same_permutation else step + 5)
        save_state_dict(state, tmp_path / "a" / f"epoch_{step:04d}.safetensors")
        save_state_dict(apply_permutation(state, spec, perms), tmp_path / "b" / f"epoch_{step:04d}.safetensors")
    generator = torch.Generator().manual_seed(0)
    data = {"test": (torch.randn(40, 6, generator=generator), torch.randint(0, 3, (40,), generator=generator))}
    return model, data


@pytest.mark.parametrize("align_to", ["step", "final"])
def test_trajectory_align_each_step_or_the_final_permutation(tmp_path, align_to):
    model, data = _steps_of_permuted_copies(tmp_path, same_permutation=align_to == "final")
    out = tmp_path / f"run-{align_to}"
    table, distances = layerlmc.trajectory(model, tmp_path / "a", tmp_path / "b", data, out,
                                           align="weight", align_to=align_to, plots=False)
    full = table[(table.kind == "full") & (table.metric == "loss")]
    assert len(full) == 3 and full["value"].abs().max() < 1e-6
    assert distances[distances.group == "full"]["l2_ab"].max() < 1e-6
    summaries = json.loads((out / "alignment.json").read_text())
    assert [s["step"] for s in summaries] == [0, 1, 2] and {s["to"] for s in summaries} == {align_to}
    assert sorted(p.name for p in (out / "permutations").iterdir()) == [
        f"epoch_{s:04d}.safetensors" for s in range(3)]
    other = "final" if align_to == "step" else "step"
    with pytest.raises(LayerLMCError, match="alignment"):
        layerlmc.trajectory(model, tmp_path / "a", tmp_path / "b", data, out, align="weight",
                            align_to=other, plots=False)


def test_final_permutation_differs_from_per_step_alignment(tmp_path):
    """Per-step copies permuted differently: only each step's own permutation removes them all."""
    model, data = _steps_of_permuted_copies(tmp_path, same_permutation=False)
    table, _ = layerlmc.trajectory(model, tmp_path / "a", tmp_path / "b", data, tmp_path / "run",
                                   align="weight", align_to="final", plots=False)
    full = table[(table.kind == "full") & (table.metric == "loss")].set_index("step")["value"]
    assert abs(full[2]) < 1e-6 and (full[[0, 1]].abs() > 1e-4).all()


def test_robustness_align(tmp_path):
    model, data = _steps_of_permuted_copies(tmp_path, same_permutation=True)
    a, b = tmp_path / "a" / "epoch_0002.safetensors", tmp_path / "b" / "epoch_0002.safetensors"
    table = layerlmc.robustness(model, a, b, data, tmp_path / "rob", samples=1, align="weight", plots=False)
    averaging = table[(table.direction == "average") & (table.step_fraction == 1.0)]
    # with b aligned to a copy of a, a full step toward b changes nothing
    base = table[(table.step_fraction == 0.0) & (table.direction == "average")]
    assert averaging["loss_mean"].to_numpy() == pytest.approx(base["loss_mean"].to_numpy()[:len(averaging)], abs=1e-5)
    assert (tmp_path / "rob" / "permutations.safetensors").exists()


def test_the_report_page_shows_the_alignment(tmp_path):
    model, data = _steps_of_permuted_copies(tmp_path, same_permutation=True)
    a, b = tmp_path / "a" / "epoch_0002.safetensors", tmp_path / "b" / "epoch_0002.safetensors"
    layerlmc.barriers(model, a, b, data, out=tmp_path / "ab", align="weight", plots=False)
    stored = json.loads((tmp_path / "ab" / "run.json").read_text())["inputs"]["alignment"]
    assert stored.startswith("weight matching")
    page = layerlmc.report(tmp_path / "ab").read_text()
    assert "alignment" in page and stored in page


def test_cli_barriers_align_on_a_user_model_and_refusal(user_files, capsys):
    f = user_files
    out = f["dir"] / "run"
    base = ["barriers", str(f["a"]), str(f["b"]), "--model", f"{f['model']}:make_net",
            "--data", f"{f['data']}:make_splits", "--out", str(out), "--batch-size", "8"]
    assert main([*base, "--align", "weight", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "aligned:" in printed and (out / "permutations.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["alignment"].startswith("weight matching")
    # the user's BatchNorm1d running statistics are permuted with its layer
    saved = layerlmc.load_state_dict(out / "permutations.safetensors")
    assert set(saved) == {"fc1", "fc2"}
    assert main([*base, "--no-plots"]) == 2
    assert "alignment" in capsys.readouterr().err
    other = [str(f["dir"] / "r2") if arg == str(out) else arg for arg in base]
    assert main([*other, "--align", "activation", "--align-split", "nope", "--no-plots"]) == 2
    assert "split for activation matching" in capsys.readouterr().err
