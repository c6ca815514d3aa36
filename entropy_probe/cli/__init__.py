"""Command line: `entropy-probe COMMAND ...`.

The commands are thin: they parse options, call the library and print. Mistakes a user can fix
(`UserError`) end with one line on stderr and a non-zero exit status; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from ..errors import UserError

logger = logging.getLogger("entropy_probe")


def apply_verbosity(ctx: click.Context, quiet: bool, verbose: int) -> None:
    """Set the log level: warnings and errors by default, errors only with -q, info with -v, debug with -vv."""
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("entropy_probe").setLevel(level)
    logging.getLogger("matplotlib").setLevel(max(level, logging.WARNING))
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    if quiet:
        os.environ.setdefault("ENTROPY_PROBE_NO_PROGRESS", "1")


def _verbosity_options() -> list[click.Option]:
    """Return -q, -v and --debug for a subcommand; -q and -v given there replace those given before it."""

    def quiet_given(ctx, param, value):
        if value:
            apply_verbosity(ctx, True, 0)

    def verbose_given(ctx, param, value):
        if value:
            apply_verbosity(ctx, False, value)

    def debug_given(ctx, param, value):
        if value:
            ctx.ensure_object(dict)
            ctx.obj["debug"] = True

    return [
        click.Option(["--debug"], is_flag=True, expose_value=False, callback=debug_given, help="Show tracebacks of errors."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=quiet_given, help="Print only results and errors; no progress bars."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=verbose_given, help="Log progress messages (-v) or debug messages (-vv)."),
    ]


class ProbeCommand(click.Command):
    """Click command that also accepts -q, -v and --debug after its name."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_verbosity_options())


class ProbeGroup(click.Group):
    """Click group that turns UserError into one line and an exit status."""

    command_class = ProbeCommand
    # Subgroups (oracle, catalog) are ProbeGroups too, so their commands accept -q and -v as well.
    group_class = type

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=ProbeGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="entropy-probe")
@click.option("--debug", is_flag=True, envvar="ENTROPY_PROBE_DEBUG", help="Show tracebacks of errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors; no progress bars.")
@click.option("-v", "--verbose", count=True, help="Log progress messages (-v) or debug messages (-vv); by default only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: int) -> None:
    """Measure the neural entropy of diffusion models.

    \b
    Examples:
      entropy-probe measure --out result.nc --plot result.png
      entropy-probe oracle gmm --dim 3 --seed 0 --out gmm3
      entropy-probe measure gmm3 --process sl:sigma0=0.1 --out gmm3_sl.nc
    """
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug)
    apply_verbosity(ctx, quiet, verbose)


def register_commands() -> None:
    from . import measure, oracle  # noqa: F401

    for optional in ("train", "compare", "export", "catalog", "sample", "audit", "reproduce", "plot"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{optional}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits with the command's status."""
    register_commands()
    try:
        status = cli.main(args=argv, prog_name="entropy-probe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # One line instead of click's usage block: what is wrong and where to read more.
        command = error.ctx.command_path if error.ctx else "entropy-probe"
        click.echo(f"error: {error.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    sys.exit(status if isinstance(status, int) else 0)
