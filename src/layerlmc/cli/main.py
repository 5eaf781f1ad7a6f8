"""The ``layerlmc`` command: parse → one library call → print the table and file paths."""

from __future__ import annotations

import logging
import sys

import click

from ..errors import LayerLMCError
from .barriers import barriers_command, groups_command
from .ls import ls_command
from .quickstart import quickstart_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="layerlmc")
def cli() -> None:
    """Layer-wise linear mode connectivity: which layers make averaging two networks fail."""


cli.add_command(barriers_command)
cli.add_command(groups_command)
cli.add_command(ls_command)
cli.add_command(quickstart_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user mistakes become one ``layerlmc: error: ...`` line and exit code 2."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("layerlmc: %(message)s"))
    logger = logging.getLogger("layerlmc")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        args = ["--help"]
    try:
        cli.main(args=args, prog_name="layerlmc", standalone_mode=False)
    except click.UsageError as err:
        hint = f" (see 'layerlmc {err.ctx.command.name} --help')" if err.ctx and err.ctx.command.name != "cli" else ""
        click.echo(f"layerlmc: error: {err.format_message()}{hint}", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"layerlmc: error: {err.format_message()}", err=True)
        return err.exit_code or 1
    except LayerLMCError as err:
        click.echo(f"layerlmc: error: {err}", err=True)
        return 2
    except (KeyboardInterrupt, click.Abort):
        click.echo("layerlmc: interrupted; rerun the same command to continue", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
