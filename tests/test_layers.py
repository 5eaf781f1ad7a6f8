import pytest
import torch
from torch import nn

from layerlmc.core.groups import SCHEMES, layer_groups, order_groups, select_groups, tied_keys
from layerlmc.errors import LayerLMCError
from layerlmc.models import cnn, mlp


def _resnetish_keys():
    keys = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.running_mean",
            "layer1.0.bn1.num_batches_tracked", "layer1.0.conv2.weight", "layer1.1.conv1.weight",
            "layer2.0.downsample.0.weight", "fc.weight", "fc.bias"]
    return {k: torch.zeros(2) for k in keys}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_groups_cover_every_key_exactly_once(scheme):
    state = _resnetish_keys()
    patterns = {"regex": ["conv", "fc"], "glob": ["layer1.*", "fc.*"]}.get(scheme, [])
    groups = layer_groups(state, scheme, patterns)
    keys = [k for g in groups for k in g.keys]
    assert sorted(keys) == sorted(state) and len(keys) == len(set(keys))
    assert [g.index for g in groups] == list(range(len(groups)))


def test_module_scheme_is_the_papers_logic_layers():
    names = [g.name for g in layer_groups(_resnetish_keys())]
    assert names == ["conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.1.conv1",
                     "layer2.0.downsample.0", "fc"]
    bn = layer_groups(_resnetish_keys())[2]
    assert "layer1.0.bn1.running_mean" in bn.keys  # buffers travel with their module


def test_block_regex_and_patterns():
    names = [g.name for g in layer_groups(_resnetish_keys(), "block")]
    assert names == ["conv1", "layer1.0", "layer1.1", "layer2.0", "fc"]
    groups = layer_groups(_resnetish_keys(), "regex", ["convs=conv\\d"])
    assert [g.name for g in groups] == ["convs", "rest"]
    with pytest.raises(LayerLMCError, match="invalid regex"):
        layer_groups(_resnetish_keys(), "regex", ["("])
    with pytest.raises(LayerLMCError, match="needs at least one --pattern"):
        layer_groups(_resnetish_keys(), "glob")
    with pytest.raises(LayerLMCError, match="did you mean 'module'"):
        layer_groups(_resnetish_keys(), "modul")


def test_tied_weights_share_a_group():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.mid = nn.Linear(3, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    ties = tied_keys(model)
    assert ties == [["embed.weight", "out.weight"]]
    groups = layer_groups(model.state_dict(), tied=ties)
    assert [g.name for g in groups] == ["embed", "mid"]
    assert groups[0].keys == ("embed.weight", "out.weight")


def test_zoo_models_have_readable_groups():
    assert [g.name for g in layer_groups(cnn().state_dict())] == ["conv1", "conv2", "conv3", "fc1", "head"]
    assert [g.name for g in layer_groups(mlp(hidden=[8, 8, 8]).state_dict())] == ["fc1", "fc2", "fc3", "head"]


def test_orders_and_selection():
    groups = layer_groups({f"l{i}.weight": torch.zeros(1) for i in range(12)})
    minimal = [g.name for g in order_groups(groups, "minimal")]
    assert minimal[:10] == ["l0", "l1", "l2", "l3", "l4", "l7", "l8", "l9", "l10", "l11"]
    assert minimal[10:] == ["l5", "l6"]
    assert [g.name for g in select_groups(groups, ["l3", "l1"])] == ["l1", "l3"]
    with pytest.raises(LayerLMCError, match="did you mean 'l1'"):
        select_groups(groups, ["l1x"])
