from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..api import federate
from ..config import FederatedConfig, load_config
from ..train.federated import round_summary


@click.command("federate")
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: the config's out, else runs/<name>].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where the clients of a round train: in this process, or as Ray tasks in "
                   "parallel (pip install 'layerlmc[ray]') [default: the config's executor, local].")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="--executor ray: a running Ray cluster's address [default: start a local Ray "
                   "instance].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Autocast dtype of the multi-model barriers' forward passes (the config's "
                   "multimodel.precision) [default: fp32]; training is always fp32.")
def federate_command(config: Path, overrides: tuple[str, ...], out: Path | None,
                     executor: str | None, address: str | None, precision: str | None) -> None:
    """Simulate federated training from a YAML CONFIG: K clients, local training, averaging
    of all layers or only some of them each round, personalized evaluation.

    Dotted overrides change the config: clients=20 rounds=5 partition.scheme=shards
    aggregate.include='conv*' aggregate.exclude=head aggregate.strategy=round-robin.
    Rerunning the same command resumes an interrupted run.

    \b
    Examples:
      layerlmc federate configs/fed_fmnist_dirichlet.yaml
      layerlmc federate configs/fed_fmnist_dirichlet.yaml aggregate.exclude=head name=fedper
      layerlmc federate configs/fed_fmnist_dirichlet.yaml clients=100 --executor ray
      layerlmc trajectory runs/fed_fmnist_dirichlet --pair client_00,client_01
    """
    # the flags are config keys too (setting no weight depends on), so a resume may change them
    flags = [f"executor={executor}"] if executor else []
    flags += [f"address={address}"] if address else []
    flags += [f"multimodel.precision={precision}"] if precision else []
    settings = load_config(FederatedConfig, config, [*overrides, *flags])
    folder = federate(settings, out)
    clients = pd.read_csv(folder / "clients.csv")
    click.echo("clients: local train / test examples, classes seen, aggregation weight")
    click.echo(clients[["name", "n_train", "n_test", "classes", "weight"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo("")
    table = round_summary(folder).set_index("round")
    click.echo("per round: clients' accuracy on their own test data (mean, std) and the average model's")
    click.echo(table.to_string(float_format=lambda v: f"{v:.4f}"))
    multimodel = folder / "multimodel" / "multimodel.csv"
    click.echo(f"clients:     {folder / 'clients.csv'}")
    click.echo(f"history:     {folder / 'history.jsonl'}")
    click.echo(f"checkpoints: {folder / 'checkpoints'}")
    if multimodel.exists():
        click.echo(f"multi-model: {multimodel}")
    click.echo(f"next:        layerlmc trajectory {folder} --pair client_00,client_01")
