from __future__ import annotations

from pathlib import Path

import click

from ..recipes import FIGURES, reproduce, reproduce_robustness, reproduce_table1
from .trajectory import report_trajectory

RECIPES = {
    "fig1": "layer-wise barriers over training (two CNNs, one initialization, different data order)",
    "fig3": "cumulative averaging from the input and from the output side (same training run as fig1)",
    "fig4": "the toy deep linear network: full path vs one layer at a time (exact numbers)",
    "robustness": "averaging direction vs random directions per layer (same training run as fig1)",
    "lm": "two character GPTs on the Jargon File: layer-wise and cumulative barriers over training",
    "vit": "a pair of ViTs on Fashion-MNIST: each weight tensor interpolated alone vs random directions",
    "subspace": "noise in the span, null space and averaging direction of two MLPs (PAPER.md §4.2)",
    "align": "two different-init pairs (MLP, ResNet-20 with LayerNorm): barriers before and after weight and activation matching",
    "table1": "federated full vs partial aggregation under two non-iid splits (14 federated runs)",
}


@click.command("reproduce")
@click.argument("study", type=click.Choice(sorted(RECIPES)), metavar="STUDY")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/reproduce"), show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="fig1/fig3/robustness/vit/lm/align: train for this many epochs [default: 10; vit 5; lm 8; align: the configs' (MLP 5, ResNet-20 8)].")
@click.option("--every", type=click.IntRange(min=1), default=None,
              help="fig1/fig3/robustness/lm: analyse every N-th epoch [default: 2; lm 1].")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="fig1/fig3: examples per split in the barrier evaluations [default: 5000]; "
                   "robustness: test examples [default: 2000]; vit: test examples [default: 1024]; "
                   "lm: test windows [default: 128]; align: test examples [default: 2000]; "
                   "table1: training images dealt to the clients [default: 12000].")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="robustness, vit: random directions per group (tensor), base and epoch "
                   "[default: robustness 5, vit 3].")
@click.option("--span", type=click.Choice(["final", "trajectory"]), default="final", show_default=True,
              help="subspace: the span of the two final weight vectors (the published plots) or of "
                   "every epoch's weights (the intended training subspace).")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="table1: federated rounds [default: 10].")
@click.option("--device", default="auto", show_default=True)
def reproduce_command(study: str, out: Path, epochs: int | None, every: int | None, max_examples: int | None,
                      samples: int | None, span: str, rounds: int | None, device: str) -> None:
    """Reproduce a study of the paper at a scale that fits two CPU cores (STUDY below)."""
    if study in FIGURES:
        table, _, analysis = reproduce(study, out, epochs=epochs, every=every or 2, max_examples=max_examples or 5000,
                                       device=device)
        report_trajectory(table, analysis, "midpoint", "models")
    elif study == "robustness":
        from .robustness import report_robustness

        table, analysis = reproduce_robustness(out, epochs=epochs, every=every or 2, samples=samples or 5,
                                               max_examples=max_examples or 2000, device=device)
        report_robustness(table, analysis, at=0.5)
    elif study == "lm":
        from ..recipes.lm import reproduce_lm

        table, _, analysis = reproduce_lm(out, epochs=epochs, every=every or 1,
                                          max_examples=max_examples or 128, device=device)
        report_trajectory(table, analysis, "midpoint", "models")
    elif study == "vit":
        from ..recipes.vit import reproduce_vit
        from .robustness import report_robustness

        table, analysis = reproduce_vit(out, epochs=epochs, samples=samples or 3, max_examples=max_examples or 1024,
                                        device=device)
        report_robustness(table, analysis, at=0.5)
    elif study == "subspace":
        from ..recipes.subspace import reproduce_subspace
        from .subspace import report_subspace

        table, folder = reproduce_subspace(out, device=device, span=span)
        report_subspace(table, folder)
    elif study == "fig4":
        from ..recipes.fig4 import fig4

        summary = fig4(out / "fig4")
        click.echo("loss along each straight path of the toy network f(x) = w2·w1·x, A=(0.5, 2), B=(2, 0.5):")
        click.echo(summary.to_string(index=False))
        click.echo(f"figure: {out / 'fig4' / 'figures' / 'fig4.png'}")
    elif study == "align":
        from ..recipes.align import reproduce_align

        table, folder = reproduce_align(out, epochs=epochs, max_examples=max_examples or 2000,
                                        device=device)
        click.echo("barriers unaligned and after weight and activation matching (midpoint, loss):")
        click.echo((folder / "align.md").read_text())
        click.echo(f"table:  {folder / 'align.csv'}")
        click.echo(f"figure: {folder / 'figures' / 'align.png'}")
    elif study == "table1":
        table, folder = reproduce_table1(out, rounds=rounds, max_examples=max_examples, device=device)
        click.echo("clients' accuracy on their own test data after the last round, mean ± std over clients (%):")
        click.echo((folder / "table1.md").read_text())
        click.echo(f"table: {folder / 'table1.csv'}")


reproduce_command.help += "\n\n\b\nSTUDY is one of:" + "".join(
    f"\n  {name:<10} {summary}" for name, summary in RECIPES.items())
reproduce_command.help += "\n\nRerunning resumes: finished training runs and records are reused."
