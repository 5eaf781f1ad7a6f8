"""Federated simulation: the aggregation math exactly, partial aggregation, resume, the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from layerlmc.api import federate
from layerlmc.cli.main import main
from layerlmc.config import AggregateConfig, FederatedConfig, load_config
from layerlmc.core.averaging import aggregate
from layerlmc.core.checkpoints import load_state_dict
from layerlmc.core.runs import round_checkpoint
from layerlmc.errors import LayerLMCError
from layerlmc.models import mlp
from layerlmc.train import federated
from layerlmc.train.federated import (
    averaged_groups,
    client_weights,
    participants,
    round_keys,
    round_summary,
)

from .test_cli import _fails

DATA = (
    "import torch\n"
    "def make(n=150):\n"
    "    g = torch.Generator().manual_seed(3)\n"
    "    y = torch.randint(0, 3, (n,), generator=g)\n"
    "    x = torch.randn(n, 4, generator=g) + torch.nn.functional.one_hot(y, 4).float() * 2\n"
    "    return {'train': (x, y), 'test': (x[:60], y[:60])}\n"
)


@pytest.fixture()
def fed_config(tmp_path):
    (tmp_path / "blobs.py").write_text(DATA)
    return {
        "name": "fed", "clients": 3, "rounds": 2, "local_epochs": 1, "batch_size": 8, "device": "cpu",
        "model": {"name": "mlp", "args": {"in_features": 4, "hidden": [6, 5], "num_classes": 3}},
        "data": {"name": f"{tmp_path / 'blobs.py'}:make"},
        "partition": {"scheme": "iid", "min_size": 5},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "multimodel": {"max_examples": 40},
    }


def _state(value: float, **extra) -> dict:
    return {"w": torch.full((2, 2), value), "b": torch.tensor([value]), **extra}


def test_aggregate_of_identical_states_is_the_identity():
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in mlp(4, [3], 2).state_dict().items()}
    out = aggregate([state, {k: v.clone() for k, v in state.items()}, state], [0.2, 0.5, 0.3])
    assert out.keys() == state.keys()
    assert all(torch.equal(out[k], state[k]) and out[k].dtype == state[k].dtype for k in state)


def test_aggregate_of_identical_float64_states_is_exact():
    torch.manual_seed(1)
    state = {"w": torch.randn(1000, dtype=torch.float64), "h": torch.randn(50).half()}
    out = aggregate([state, state, state], [0.1, 0.2, 0.7])
    assert torch.equal(out["w"], state["w"]) and torch.equal(out["h"], state["h"])


def test_aggregate_weighted_by_hand():
    states = [_state(1.0), _state(4.0), _state(10.0)]
    out = aggregate(states, [1, 1, 2])
    # (1 + 4 + 2·10) / 4
    assert torch.equal(out["w"], torch.full((2, 2), 6.25))
    assert torch.equal(out["b"], torch.tensor([6.25]))
    assert torch.equal(states[0]["w"], torch.full((2, 2), 1.0))  # inputs untouched


def test_aggregate_only_the_given_keys_and_normalises_per_key():
    out = aggregate([_state(1.0), _state(3.0)], [0.5, 0.5], keys=["w"])
    assert set(out) == {"w"}
    # a key only two of three clients send is averaged over those two, weights renormalised
    states = [_state(1.0, extra=torch.tensor([2.0])), _state(3.0), _state(5.0, extra=torch.tensor([8.0]))]
    out = aggregate(states, [0.25, 0.25, 0.5])
    assert torch.allclose(out["extra"], torch.tensor([(0.25 * 2 + 0.5 * 8) / 0.75]))
    assert torch.equal(out["w"], torch.full((2, 2), 0.25 * 1 + 0.25 * 3 + 0.5 * 5))


def test_aggregate_blends_float_buffers_not_integer_ones():
    a = {"running_mean": torch.tensor([0.0, 2.0]), "num_batches_tracked": torch.tensor(3)}
    b = {"running_mean": torch.tensor([4.0, 6.0]), "num_batches_tracked": torch.tensor(9)}
    out = aggregate([a, b], [0.5, 0.5])
    assert torch.equal(out["running_mean"], torch.tensor([2.0, 4.0]))
    assert "num_batches_tracked" not in out


def test_aggregate_rejects_bad_weights():
    with pytest.raises(LayerLMCError, match="2 states but 1 weights"):
        aggregate([_state(1.0), _state(2.0)], [1.0])
    with pytest.raises(LayerLMCError, match="non-negative"):
        aggregate([_state(1.0)], [0.0])


def test_client_weights():
    assert client_weights([10, 30], 8, "examples") == [0.25, 0.75]
    assert client_weights([10, 30], 8, "batches") == [2 / 6, 4 / 6]  # ceil(10/8)=2, ceil(30/8)=4
    assert client_weights([10, 30], 8, "uniform") == [0.5, 0.5]


def test_partial_aggregation_choices():
    model = mlp(4, [6, 5], 3)
    state = model.state_dict()

    def chosen(**options):
        groups = averaged_groups(state, model, AggregateConfig(**options))
        return [k for g in groups for k in g.keys]

    assert chosen() == list(state)
    assert chosen(exclude=["head"]) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert chosen(include=["fc*"], exclude=["*.bias"]) == ["fc1.weight", "fc2.weight"]
    assert chosen(include=["head.weight"]) == ["head.weight"]
    with pytest.raises(LayerLMCError, match="'conv\\*' matches no layer group or key; groups: fc1, fc2, head"):
        chosen(include=["conv*"])
    groups = averaged_groups(state, model, AggregateConfig(strategy="round-robin"))
    assert [round_keys(groups, "round-robin", r) for r in (1, 2, 3, 4)] == [
        ["fc1.weight", "fc1.bias"], ["fc2.weight", "fc2.bias"], ["head.weight", "head.bias"],
        ["fc1.weight", "fc1.bias"]]
    assert round_keys(groups, "none", 1) == []


def test_participants_are_a_seeded_fraction():
    config = FederatedConfig(clients=10, fraction=0.3, seed=4)
    first = participants(config, 1)
    assert len(first) == 3 and first == participants(config, 1)
    assert any(participants(config, r) != first for r in range(2, 6))
    assert participants(FederatedConfig(clients=4), 1) == [0, 1, 2, 3]
    # ⌊C·K⌋ as FedAvg, at least one
    assert len(participants(FederatedConfig(clients=10, fraction=0.25), 1)) == 2
    assert len(participants(FederatedConfig(clients=100, fraction=0.29), 1)) == 29
    assert len(participants(FederatedConfig(clients=3, fraction=0.1), 1)) == 1


def _final_states(folder, clients=3, round_=2):
    return [load_state_dict(round_checkpoint(folder, federated.client_name(i, clients), round_)) for i in range(clients)]


def test_federate_end_to_end_and_personalization(tmp_path, fed_config):
    fedavg = federate(load_config(FederatedConfig, fed_config), tmp_path / "fedavg", progress=False)
    history = [json.loads(line) for line in (fedavg / "history.jsonl").read_text().splitlines()]
    # rounds 0..2: three clients' local test and the average's global test each round
    assert len(history) == 3 * 4
    assert {r["model"] for r in history} == {"client_00", "client_01", "client_02", "average"}
    clients = pd.read_csv(fedavg / "clients.csv")
    assert clients["n_train"].sum() + clients["n_test"].sum() == 150
    assert clients["weight"].sum() == pytest.approx(1.0)
    summary = round_summary(fedavg)
    assert list(summary["round"]) == [0, 1, 2]
    # the stored average is the weighted average of the stored client models
    states = _final_states(fedavg)
    average = load_state_dict(round_checkpoint(fedavg, "average", 2))
    expected = aggregate(states, list(clients["weight"]))
    assert all(torch.allclose(average[k], expected[k]) for k in expected)
    table = pd.read_csv(fedavg / "multimodel" / "multimodel.csv")
    assert set(table["kind"]) == {"full", "group"} and set(table["group"]) == {"full", "fc1", "fc2", "head"}
    assert (table["value"] == table["average"] - table["clients_mean"]).all()
    assert any((fedavg / "multimodel" / "figures").glob("multimodel_test_loss.png"))

    # FedPer: every client keeps its head; after local training the heads differ, the rest
    # of each client's network started the round from the same average
    fedper = federate(load_config(FederatedConfig, {**fed_config, "aggregate": {"exclude": ["head"]}}),
                      tmp_path / "fedper", progress=False)
    _, after, _ = federated._resume(fedper, [federated.client_name(i, 3) for i in range(3)], None,
                                    list(clients["weight"]), averaged_groups(
                                        states[0], mlp(4, [6, 5], 3), AggregateConfig(exclude=["head"])),
                                    "fedavg", torch.device("cpu"))
    assert torch.equal(after[0]["fc1.weight"], after[1]["fc1.weight"])
    assert not torch.equal(after[0]["head.weight"], after[1]["head.weight"])

    # never averaged: the clients are independent models from one initialization
    alone = federate(load_config(FederatedConfig, {**fed_config, "aggregate": {"strategy": "none"}}),
                     tmp_path / "alone", progress=False)
    initial = _final_states(alone, round_=0)
    assert all(torch.equal(initial[0][k], initial[2][k]) for k in initial[0])
    final = _final_states(alone)
    assert not torch.equal(final[0]["fc1.weight"], final[1]["fc1.weight"])


def test_federate_resumes_to_identical_weights(tmp_path, fed_config, monkeypatch):
    config = load_config(FederatedConfig, {**fed_config, "aggregate": {"strategy": "round-robin"}})
    clean = federate(config, tmp_path / "clean", progress=False)
    original = federated.LocalTraining.__call__

    def killed_in_round_two(self, task):
        if task.round == 2 and task.client == 1:
            raise KeyboardInterrupt
        return original(self, task)

    monkeypatch.setattr(federated.LocalTraining, "__call__", killed_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        federate(config, tmp_path / "killed", progress=False)
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(federated.LocalTraining, "__call__", original)
    resumed = federate(config, tmp_path / "killed", progress=False)
    for a, b in zip(_final_states(clean), _final_states(resumed)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    history = (resumed / "history.jsonl").read_text().splitlines()
    assert len(history) == len((clean / "history.jsonl").read_text().splitlines())

    # killed after round 2's history but before its average (the mark of a complete round)
    saved = federated.save_state_dict

    def killed_saving_the_average(state, path):
        if path.parent.name == "average" and path.stem == "round_0002":
            raise KeyboardInterrupt
        return saved(state, path)

    monkeypatch.setattr(federated, "save_state_dict", killed_saving_the_average)
    with pytest.raises(KeyboardInterrupt):
        federate(config, tmp_path / "late", progress=False)
    monkeypatch.setattr(federated, "save_state_dict", saved)
    late = federate(config, tmp_path / "late", progress=False)
    for a, b in zip(_final_states(clean), _final_states(late)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert round_summary(late).equals(round_summary(clean))


def test_local_steps_replace_local_epochs(tmp_path, fed_config, monkeypatch):
    calls = []
    original = federated.train_epoch

    def counting(*args, **kwargs):
        calls.append(kwargs.get("batches"))
        return original(*args, **kwargs)

    monkeypatch.setattr(federated, "train_epoch", counting)
    config = load_config(FederatedConfig, {**fed_config, "rounds": 1, "local_epochs": 3, "local_steps": 2,
                                           "multimodel": {"enabled": False}})
    federate(config, tmp_path / "steps", progress=False)
    assert calls == [2, 2, 2]  # one pass of two batches per client, not three


def test_multi_model_barriers_use_the_aggregation_weights():
    from layerlmc.analyses.multimodel import multi_model_barriers

    def record(kind, base, loss, group="full", index=None):
        return {"step": 1, "unit": "round", "kind": kind, "group": group, "group_index": index,
                "base": base, "split": "test", "loss": loss, "accuracy": 0.5}

    records = [record("endpoint", "c0", 1.0), record("endpoint", "c1", 3.0), record("full", None, 4.0),
               record("group", "c0", 2.0, "fc1", 0), record("group", "c1", 6.0, "fc1", 0)]
    table = multi_model_barriers(records, {"c0": 0.75, "c1": 0.25}).set_index(["group", "metric"])
    # clients' mean 0.75·1 + 0.25·3 = 1.5; the group-averaged clients 0.75·2 + 0.25·6 = 3
    assert table.loc[("full", "loss"), "value"] == pytest.approx(4.0 - 1.5)
    assert table.loc[("fc1", "loss"), "value"] == pytest.approx(3.0 - 1.5)
    assert table.loc[("fc1", "error"), "value"] == pytest.approx(0.0)
    equal = multi_model_barriers(records).set_index(["group", "metric"])
    assert equal.loc[("full", "loss"), "value"] == pytest.approx(4.0 - 2.0)


def test_federate_cli_and_bad_input(tmp_path, fed_config, capsys):
    import yaml

    config_file = tmp_path / "fed.yaml"
    config_file.write_text(yaml.safe_dump(fed_config))
    out = tmp_path / "cli"
    assert main(["federate", str(config_file), "rounds=1", "multimodel.enabled=false", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "local_accuracy_mean" in printed and f"layerlmc trajectory {out} --pair client_00,client_01" in printed
    assert main(["trajectory", str(out), "--pair", "client_00,client_02", "--max-examples", "30"]) == 0
    assert "round" in (out / "analysis" / "barriers.csv").read_text()

    def fails(*overrides, fragment):
        _fails(capsys, ["federate", str(config_file), *overrides, "--out", str(tmp_path / "bad")], fragment)

    fails("aggregate.include=conv*", fragment="matches no layer group or key; groups: fc1, fc2, head")
    fails("clients=0", fragment="config key 'clients'")
    fails("partition.scheme=dirichlet", "partition.alpha=0", fragment="config key 'partition.alpha'")
    fails("partition.scheme=shards", "partition.classes_per_client=5", fragment="cannot give 3 clients 5 classes")


def test_multi_model_barriers_honour_the_precision(fed_config, tmp_path):
    config = load_config(FederatedConfig, {**fed_config, "rounds": 1,
                                           "multimodel": {"max_examples": 40, "precision": "bf16"}})
    folder = federate(config, tmp_path / "bf16", progress=False, plots=False)
    stored = json.loads((folder / "multimodel" / "run.json").read_text())
    assert stored["inputs"]["precision"] == "bf16"
    bf16 = pd.read_csv(folder / "multimodel" / "multimodel.csv")
    fp32 = federate(load_config(FederatedConfig, {**fed_config, "rounds": 1}), tmp_path / "fp32",
                    progress=False, plots=False)
    exact = pd.read_csv(fp32 / "multimodel" / "multimodel.csv")
    # the same clients (fp32 training), evaluated in another dtype: close, not equal
    assert (bf16["clients_mean"] - exact["clients_mean"]).abs().max() < 0.05
    assert not bf16["clients_mean"].equals(exact["clients_mean"])
    # the folder computed in bf16 refuses fp32
    with pytest.raises(LayerLMCError, match="another precision"):
        from layerlmc.analyses.multimodel import analyse_federated_run

        analyse_federated_run(folder, precision="fp32", progress=False)
