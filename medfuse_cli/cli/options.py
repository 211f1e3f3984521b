"""Options several subcommands share, declared once."""

from __future__ import annotations

import typer

MODEL = typer.Option("lwnet", "--model", "-m", help="Fuser name (see `medfuse models`).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line.")
JSON = typer.Option(False, "--json", help="Print a machine-readable JSON summary on stdout.")
