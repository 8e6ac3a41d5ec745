"""The ``cellmorphnet`` command: global options, every subcommand registered here, and error handling.

Every command is wrapped by ``_handle_errors``: a ``CellMorphNetError`` becomes a one-line message
plus a hint and a non-zero exit; ``CELLMORPHNET_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cellmorphnet import __version__
from cellmorphnet.cli.output import output
from cellmorphnet.errors import CellMorphNetError
from cellmorphnet.paths import ENV_HOME
from cellmorphnet.runtime.distributed import JobBroken

app = typer.Typer(
    name="cellmorphnet",
    help="Blood-cell classification: fetch and prepare datasets, train, evaluate, run on folders, export.\n\n"
    "For research use only: cellmorphnet is not a medical device and must not be used for diagnosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _debug() -> bool:
    return os.environ.get("CELLMORPHNET_DEBUG", "") not in ("", "0", "false")


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        clean = False
        try:
            result = fn(*args, **kwargs)
            clean = True
            return result
        except typer.Exit:  # the command's own exit code (every rank raises the same): an answer, not a failure
            clean = True
            raise
        except CellMorphNetError as e:
            if _debug():
                raise
            # in a torchrun job rank 0 reports what every rank meets; the others report only their own trouble
            if output.rank == 0 or isinstance(e, JobBroken):
                # messages and hints are text: "cellmorphnet[serve]" must not be read as a style tag
                output.errors().print(f"[bold red]Error:[/bold red] {_rank()}{escape(e.message)}", soft_wrap=True)
                if e.hint and output.rank == 0:
                    output.errors().print(f"[dim]Hint:[/dim] {escape(e.hint)}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if _debug():
                raise
            output.err.print("[yellow]Interrupted.[/yellow]")
            raise typer.Exit(130) from None
        except (typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: still one line, the traceback behind the debug variable
            if _debug():
                raise
            output.errors().print(
                f"[bold red]Unexpected error:[/bold red] {_rank()}{type(e).__name__}: {escape(str(e))}. "
                "Set CELLMORPHNET_DEBUG=1 to see the traceback, and please report it.",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        finally:
            from cellmorphnet.runtime import distributed

            distributed.stop(clean=clean)

    return wrapper


def _rank() -> str:
    return f"(rank {output.rank}) " if output.rank else ""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cellmorphnet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar=ENV_HOME,
            help="Folder for downloads, prepared data and runs \\[default: your user data folder].",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the result and errors: no messages, warnings or progress.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    from cellmorphnet.paths import home_dir

    output.set_quiet(quiet)

    # Pillow warns (three raw lines) when an image has more pixels than it considers safe; cellmorphnet reads
    # such an image on purpose (serve has its own pixel limit) or reports it as too large, one line per file.
    warnings.filterwarnings("ignore", message="Image size .* could be decompression bomb DOS attack")
    ctx.obj = {"home": home.expanduser().resolve() if home else home_dir()}


def _help(doc: str | None) -> str | None:
    """A module docstring as help: each paragraph one line, for the terminal to wrap (the source's hard line breaks
    would otherwise stay, leaving orphan words at the end of lines on any other width)."""
    if not doc:
        return doc
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in doc.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _register() -> None:
    from cellmorphnet.cli import eval as eval_cmd
    from cellmorphnet.cli import export, fetch, infer, lab, prepare, reviews, serve, status, train, upgrade, users

    for module in (fetch, prepare, train, status, eval_cmd, infer, export, serve, upgrade):
        app.command(module.NAME, help=_help(module.__doc__))(_handle_errors(module.command))
    for group in (lab, reviews, users):  # groups: lab create/list/..., reviews list/export, users add/list
        for command in group.app.registered_commands:
            command.help = command.help or _help(command.callback.__doc__)  # one line a paragraph, as above
            command.callback = _handle_errors(command.callback)
        app.add_typer(group.app, name=group.NAME, help=_help(group.__doc__))


_register()


def _plain_flags() -> None:
    """On/off flags without a type column in ``--help``: Typer 0.29 with Click 8.2+ shows ``<bool>`` there for every
    flag (``--json <bool>``), which reads as if the flag took a value."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_plain_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    display_type_rich._plain_flags = True
    TyperOption.display_type_rich = display_type_rich


_plain_flags()


def main() -> None:
    app()
