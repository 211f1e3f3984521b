"""Options several subcommands share, declared once."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MODEL = typer.Option("lwnet", "--model", "-m", help="Fuser name (see `medfuse models`).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line.")
JSON = typer.Option(False, "--json", help="Print a machine-readable JSON summary on stdout.")


stderr = Console(stderr=True)


def progress_bar(label: str, quiet: bool, eta: bool = True) -> Progress:
    """The subcommands' progress bar: on stderr (stdout stays for --json and PNGs), gone when done.

    ``label`` may use ``{task.description}`` to show what is being worked on.
    """
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=stderr, disable=quiet, transient=True)
