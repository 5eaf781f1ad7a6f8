from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the page (a file, or a folder for report.html) "
                   "[default: FOLDER/report.html].")
def report_command(folder: Path, out: Path | None) -> None:
    """Write one self-contained HTML page of a run folder, from its records alone.

    FOLDER is the --out of an analysis (barriers, trajectory, robustness, subspace), or a
    training or federated run, whose analyses are shown on the same page. The page has the
    summary tables, interactive figures with hover values, the run's inputs and settings and
    links to the raw files. It opens offline from the file system (plotly is written into it).
    Damaged or missing records are skipped and listed on the page.

    \b
    Examples:
      layerlmc report runs/quickstart
      layerlmc report runs/ab --out ~/reports/ab.html
    """
    from ..plots.report import write_report  # plotly loads only for this command

    click.echo(f"report: {write_report(folder, out)}")
