from __future__ import annotations

from pathlib import Path

import click

from ..config import TrainConfig, load_config
from ..train import read_history, train_runs


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: the config's out, else runs/<name>].")
def train_command(config: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Train the runs of a YAML CONFIG (a pair by default), a checkpoint every epoch.

    Dotted overrides change the config: optimizer.lr=0.1 epochs=20 init=different.
    Rerunning the same command resumes an interrupted run.

    \b
    Example:
      layerlmc train configs/pair_fmnist_cnn.yaml epochs=4
    """
    settings = load_config(TrainConfig, config, overrides)
    folder = train_runs(settings, out)
    last = {}
    for record in read_history(folder):
        last[record["role"]] = record
    for role, record in last.items():
        click.echo(f"run {role}: epoch {record['epoch']}, train loss {record['train_loss']:.4f}, "
                   f"test loss {record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.4f}")
    click.echo(f"checkpoints: {folder / 'checkpoints'}")
    click.echo(f"history:     {folder / 'history.jsonl'}")
    click.echo(f"next:        layerlmc trajectory {folder}")
