"""The model zoo: every registered model goes through the barrier core, plus each model's own
promises (normalisation, names, per-tensor groups)."""

from __future__ import annotations

import inspect
import math
import sys
import types

import pytest
import torch
from torch import nn

import layerlmc
from layerlmc.analyses.robustness import robustness_groups
from layerlmc.core.groups import layer_groups
from layerlmc.errors import LayerLMCError
from layerlmc.registry import models
from layerlmc.specs import build_model

#: Small arguments, so that every model runs in a fraction of a second; a model not listed
#: here is built with its defaults.
TEST_KWARGS: dict[str, dict] = {
    "mlp": {"hidden": [8]},
    "cnn": {"width": 2, "hidden": 8},
    "deep-cnn": {"width": 2, "hidden": 8},
    "resnet18": {"width": 2},
    "resnet20": {"width": 2},
    "vgg11": {"width": 2, "hidden": 8},
    "vgg16": {"width": 2, "hidden": 8},
    "mobilenet": {"width": 4},
    "vit": {"dim": 8, "depth": 1, "heads": 2, "mlp_dim": 8},
    "char-gpt": {"vocab_size": 11, "block_size": 8, "dim": 8, "depth": 1, "heads": 2},
}
EXAMPLES = 6
#: argument names under which a sequence model states its context length
CONTEXT_NAMES = ("block_size", "sequence_length", "context_length", "max_len", "context")


def arguments(factory, kwargs: dict) -> dict:
    """The factory's defaults, updated with ``kwargs``."""
    defaults = {name: p.default for name, p in inspect.signature(factory).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def example_data(factory, kwargs: dict, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """A split shaped for the model, read off its arguments: token windows for a sequence model
    (``vocab_size``), vectors for ``in_features``, otherwise images (``in_channels``,
    ``image_size``; 28×28 one-channel by default, the zoo's Fashion-MNIST)."""
    args = arguments(factory, kwargs)
    g = torch.Generator().manual_seed(seed)
    if "vocab_size" in args:
        vocab = int(args["vocab_size"])
        length = min(8, next((int(args[n]) for n in CONTEXT_NAMES if n in args), 8))
        tokens = torch.randint(0, vocab, (EXAMPLES, length + 1), generator=g)
        return {"test": (tokens[:, :-1], tokens[:, 1:])}
    classes = int(args.get("num_classes", 10))
    if "in_features" in args:
        x = torch.randn(EXAMPLES, int(args["in_features"]), generator=g)
    else:
        size = int(args.get("image_size", 28))
        x = torch.randn(EXAMPLES, int(args.get("in_channels", 1)), size, size, generator=g)
    return {"test": (x, torch.randint(0, classes, (EXAMPLES,), generator=g))}


def built(name: str, seed: int, **extra) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, {**TEST_KWARGS.get(name, {}), **extra})


def image_kwargs(name: str) -> dict:
    """One-channel inputs for the CIFAR models, so every image model meets the same data."""
    args = arguments(models.get(name), TEST_KWARGS.get(name, {}))
    return {"in_channels": 1} if args.get("in_channels", 1) != 1 else {}


@pytest.mark.parametrize("name", [entry.name for entry in models.entries()])
def test_every_model_goes_through_the_barrier_core(name):
    extra = image_kwargs(name)
    kwargs = {**TEST_KWARGS.get(name, {}), **extra}
    model = built(name, 0, **extra)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v.clone() for k, v in built(name, 1, **extra).state_dict().items()}
    data = example_data(models.get(name), kwargs)
    options = {"alphas": "0,0.5,1", "device": "cpu", "progress": False}

    same = layerlmc.barriers(model, a, a, data, definitions=("midpoint", "max"),
                             references=("models", "path"), **options)
    assert len(same) and (same["value"].abs() < 1e-6).all(), same[same["value"].abs() >= 1e-6]

    table = layerlmc.barriers(model, a, b, data, **options)
    assert table["value"].map(math.isfinite).all()
    groups = layer_groups(a)
    moving = {g.name for g in groups if any(a[k].is_floating_point() for k in g.keys)}
    assert set(table["group"]) == {"full"} | moving

    keys = [k for g in groups for k in g.keys]
    assert sorted(keys) == sorted(a) and len(keys) == len(set(keys))


def test_resnet18_without_normalisation_has_the_papers_21_layers():
    model = build_model("resnet18", {"width": 1})
    names = [g.name for g in layer_groups(model.state_dict())]
    blocks = [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in (0, 1) for c in (1, 2)]
    for stage in (2, 3, 4):
        blocks.insert(blocks.index(f"layer{stage}.0.conv2") + 1, f"layer{stage}.0.downsample.0")
    assert names == ["conv1", *blocks, "fc"]
    assert all(not k.endswith("bias") for k in model.state_dict() if k != "fc.bias")


@pytest.mark.parametrize("norm, kind, buffers", [
    ("none", None, False), ("batch", nn.BatchNorm2d, True), ("group", nn.GroupNorm, False),
    ("layer", nn.GroupNorm, False),
])
def test_resnet_norm_variants(norm, kind, buffers):
    for name in ("resnet18", "resnet20"):
        model = build_model(name, {"width": 2, "norm": norm})
        norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
        state = model.state_dict()
        if kind is None:
            assert not norms and not any("bn" in k or "downsample.1" in k for k in state)
        else:
            assert norms and all(type(m) is kind for m in norms)
            assert "layer2.0.downsample.1.weight" in state
        assert any("running_mean" in k for k in state) == buffers
    assert build_model("resnet18", {"width": 2, "norm": "layer"}).bn1.num_groups == 1
    # GroupNorm takes as many of the 32 groups as the channels allow
    assert build_model("resnet18", {"width": 2, "norm": "group"}).bn1.num_groups == 2
    assert build_model("resnet18", {"width": 64, "norm": "group"}).bn1.num_groups == 32


def test_zoo_mistakes_are_one_line():
    with pytest.raises(LayerLMCError, match="unknown norm 'batchnorm'"):
        build_model("resnet18", {"norm": "batchnorm"})
    with pytest.raises(LayerLMCError, match="not a multiple of patch_size"):
        build_model("vit", {"image_size": 30, "patch_size": 7})
    with pytest.raises(LayerLMCError, match="not a multiple of heads"):
        build_model("vit", {"dim": 10, "heads": 4})


def test_mobilenet_batch_norm_keeps_no_running_statistics():
    model = build_model("mobilenet", {"width": 4})
    assert list(model.buffers()) == []
    assert all(not m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    state = model.state_dict()
    # the paper's partial-aggregation list: pointwise conv2 of blocks 0-12, depthwise conv1 of 1-3
    assert all(f"layers.{i}.conv2.weight" in state for i in range(13))
    assert "layers.13.conv2.weight" not in state
    assert state["layers.1.conv1.weight"].shape[1] == 1  # depthwise
    assert "linear.weight" in state


def test_vgg_names_and_input_sizes():
    for name, convs in (("vgg11", 8), ("vgg16", 13)):
        model = build_model(name, {"width": 2, "hidden": 8, "batch_norm": True}).eval()
        names = [g.name for g in layer_groups(model.state_dict())]
        assert names[:2] == ["conv1", "bn1"] and names[-3:] == [f"bn{convs}", "fc1", "head"]
        assert sum(n.startswith("conv") for n in names) == convs
        for size in (28, 32):  # Fashion-MNIST and CIFAR
            assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert not any(k.startswith("bn") for k in build_model("vgg11", {"width": 2}).state_dict())


def test_vit_per_tensor_groups_pair_each_weight_with_its_bias():
    model = build_model("vit", {"dim": 8, "depth": 2, "heads": 2, "mlp_dim": 8})
    state = model.state_dict()
    groups = robustness_groups(state, model, per_tensor=True)
    by_name = {g.name: g.keys for g in groups}
    assert by_name["blocks.0.attn.qkv"] == ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias")
    assert by_name["cls_token"] == ("cls_token",) and by_name["pos_embed"] == ("pos_embed",)
    for name, keys in by_name.items():
        if f"{name}.weight" in state and f"{name}.bias" in state:
            assert keys == (f"{name}.weight", f"{name}.bias")
        else:
            assert len(keys) == 1
    # patch_embed, cls_token, pos_embed, 6 per block, norm, head
    assert len(groups) == 3 + 6 * 2 + 2
    assert [k for g in groups for k in g.keys] == list(state)


def test_vit_takes_fashion_mnist_and_cifar_images():
    small = build_model("vit", {"dim": 8, "depth": 1, "heads": 2, "mlp_dim": 8}).eval()
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    cifar = build_model("vit", {"image_size": 32, "patch_size": 4, "in_channels": 3, "dim": 8,
                                "depth": 1, "heads": 2, "mlp_dim": 8}).eval()
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(LayerLMCError, match="28×28 images"):
        small(torch.randn(2, 1, 32, 32))


def test_reproduce_vit_on_tiny_data(tiny_fmnist, tmp_path, monkeypatch):
    from layerlmc.recipes import vit as recipes_vit

    config = recipes_vit.CONFIG.read_text()
    config = config.replace("dim: 64, depth: 3, heads: 4, mlp_dim: 128",
                            "dim: 8, depth: 1, heads: 2, mlp_dim: 8")
    config = config.replace("train_examples: 20000", "train_examples: 200")
    tiny = tmp_path / "pair_fmnist_vit.yaml"
    tiny.write_text(config)
    monkeypatch.setattr(recipes_vit, "CONFIG", tiny)
    monkeypatch.setattr(recipes_vit, "ALPHAS", "0,0.5,1")
    # the figures (tested in test_robustness) and matplotlib's import would take most of
    # this test's time
    drawn = []
    figures = types.ModuleType("layerlmc.plots.robustness")
    figures.plot_robustness = lambda table, out, at=0.5: drawn.append((len(table), out))
    monkeypatch.setitem(sys.modules, "layerlmc.plots.robustness", figures)
    table, folder = recipes_vit.reproduce_vit(tmp_path / "runs", epochs=1, samples=2,
                                              max_examples=50, device="cpu", progress=False)
    assert folder == tmp_path / "runs" / "vit"
    assert (folder / "robustness.csv").is_file() and drawn == [(len(table), folder / "figures")]
    groups = set(table["group"])
    assert {"patch_embed", "blocks.0.attn.qkv", "blocks.0.mlp.fc2", "head"} <= groups
    assert set(table["direction"]) == {"average", "random"} and set(table["base"]) == {"a", "b"}
    assert table["loss_mean"].map(math.isfinite).all()
    assert int(table[table["direction"] == "random"]["samples"].max()) == 2
