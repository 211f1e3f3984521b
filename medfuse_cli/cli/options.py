"""Options the subcommands share, each declared once so it means one thing everywhere.

Every command that reads pairs (fuse, evaluate, benchmark, train) takes the ones that apply to
it from here: ``--device``, ``--threads``, ``--resize``, ``--chroma``, ``--checkpoint``,
``--weights``, ``--batch-size``, ``--max-pixels``; and ``--quiet``/``--json`` for its output.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medfuse_cli.io import DEFAULT_MAX_PIXELS

MODEL = typer.Option("lwnet", "--model", "-m", help="Fuser name (see `medfuse models`).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda (cuda:N); an absent CUDA is an error.")
THREADS: int | None = typer.Option(
    None,
    "--threads",
    min=1,
    help="CPU threads for torch while fusing [default: the fuser's measured choice: 1 for lwnet and the rules, all cores for lywnet].",
)
RESIZE = typer.Option(
    False, "--resize", help="Resize the second image to the MRI's size (bicubic) instead of refusing."
)
CHROMA = typer.Option(
    "auto",
    "--chroma",
    help="How to read the second image's colour: auto (colour when >= 2 % of its pixels are coloured), keep, or drop.",
)
CHECKPOINT: str | None = typer.Option(
    None,
    "--checkpoint",
    help="A shipped checkpoint, e.g. lwnet.ct [default: chosen per pair from the second image].",
)
WEIGHTS: Path | None = typer.Option(
    None, "--weights", help="A safetensors checkpoint to use instead of the shipped ones."
)
BATCH_SIZE = typer.Option(16, "--batch-size", min=1, help="Pairs fused per call.")
MAX_PIXELS = typer.Option(
    DEFAULT_MAX_PIXELS,
    "--max-pixels",
    min=1,
    help="Refuse an image with more pixels (width x height) than this, read from its header before decoding: a guard against decompression bombs (Pillow's default limit, about 9459x9459). Raise it for large legitimate images.",
)
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
