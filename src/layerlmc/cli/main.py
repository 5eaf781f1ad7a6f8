"""The ``layerlmc`` command: parse → one library call → print the table and file paths."""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import LayerLMCError
from .align import align_command
from .barriers import barriers_command, groups_command
from .federate import federate_command
from .ls import ls_command
from .quickstart import quickstart_command
from .report import report_command
from .reproduce import reproduce_command
from .robustness import robustness_command
from .subspace import subspace_command
from .theory import theory_command
from .train import train_command
from .trajectory import plot_command, trajectory_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="layerlmc")
def cli() -> None:
    """Layer-wise linear mode connectivity: which layers make averaging two networks fail."""


cli.add_command(align_command)
cli.add_command(barriers_command)
cli.add_command(groups_command)
cli.add_command(ls_command)
cli.add_command(quickstart_command)
cli.add_command(train_command)
cli.add_command(trajectory_command)
cli.add_command(federate_command)
cli.add_command(plot_command)
cli.add_command(report_command)
cli.add_command(robustness_command)
cli.add_command(subspace_command)
cli.add_command(reproduce_command)
cli.add_command(theory_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes become one ``layerlmc: error: ...`` line and exit code 2."""
    logger = logging.getLogger("layerlmc")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("layerlmc: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        args = ["--help"]
    try:
        cli.main(args=args, prog_name="layerlmc", standalone_mode=False)
    except click.UsageError as err:
        # command_path names a subcommand of a group in full ("layerlmc theory deep-linear")
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx and err.ctx.command.name != "cli" else ""
        _error(f"{err.format_message()}{hint}")
        return 2
    except click.ClickException as err:
        _error(err.format_message())
        return err.exit_code or 1
    except LayerLMCError as err:
        _error(str(err))
        return 2
    except (KeyboardInterrupt, click.Abort):
        click.echo("layerlmc: interrupted; rerun the same command to continue", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug of ours: one line, the traceback on request
        if os.environ.get("LAYERLMC_DEBUG"):
            raise
        _error(f"internal error: {type(err).__name__}: {err} (rerun with LAYERLMC_DEBUG=1 for the traceback)")
        return 1
    return 0


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _error(message: str) -> None:
    # one line, whatever the message: multi-line texts from libraries are joined
    click.echo("layerlmc: error: " + " ".join(message.split()), err=True)


if __name__ == "__main__":
    sys.exit(main())
