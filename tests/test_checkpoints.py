import os

import pytest
import torch

from layerlmc.core.checkpoints import check_pair, load_state_dict, save_state_dict
from layerlmc.errors import LayerLMCError


class Exploit:
    """Unpickling this would run code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state():
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3), "bn.num_batches_tracked": torch.tensor(5)}


def test_safetensors_roundtrip(tmp_path):
    state = _state()
    path = save_state_dict(state, tmp_path / "x.safetensors")
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state_dict", "last"])
def test_nested_and_prefixed_checkpoints(tmp_path, wrap):
    state = _state()
    blob = {"epoch": 4, wrap: {f"module._orig_mod.{k}": v for k, v in state.items()}, "optimizer": {"lr": 0.1}}
    torch.save(blob, tmp_path / "x.pth")
    loaded = load_state_dict(tmp_path / "x.pth")
    assert sorted(loaded) == sorted(state)


def test_pickle_that_runs_code_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(1), "evil": Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(LayerLMCError, match="refused to load .*evil.pt.*needs code to load"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(LayerLMCError, match="checkpoint not found"):
        load_state_dict(tmp_path / "nope.pt")
    good = save_state_dict(_state(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LayerLMCError, match="cannot read safetensors checkpoint"):
        load_state_dict(tmp_path / "cut.safetensors")
    torch.save(_state(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LayerLMCError, match="cannot read checkpoint"):
        load_state_dict(tmp_path / "cut.pt")
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(LayerLMCError, match="cannot read checkpoint"):
        load_state_dict(tmp_path / "text.bin")
    torch.save({"epoch": 3}, tmp_path / "nothing.pt")
    with pytest.raises(LayerLMCError, match="no state dict found"):
        load_state_dict(tmp_path / "nothing.pt")


def test_mismatches_are_named():
    a = _state()
    b = dict(a)
    b["fc.weight"] = torch.zeros(4, 2)
    b.pop("fc.bias")
    b["extra.weight"] = torch.zeros(1)
    with pytest.raises(LayerLMCError) as err:
        check_pair(a, b)
    message = str(err.value)
    assert "fc.bias" in message and "extra.weight" in message and "fc.weight: shape [3, 2] in a vs [4, 2] in b" in message
    c = {k: v.double() if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(LayerLMCError, match="fc.weight: dtype torch.float32 in a vs torch.float64"):
        check_pair(a, c)
    check_pair(a, dict(a), expected=a)
