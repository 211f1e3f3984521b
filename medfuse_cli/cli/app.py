"""The ``medfuse`` Typer app and its entry point.

Subcommands parse arguments, call the core and print; every user-facing problem is raised as
``MedfuseError`` and printed here as one line on stderr with exit status 1 (usage errors are
Typer's, exit status 2). No traceback reaches the user for bad input.
"""

from __future__ import annotations

import logging
import sys

import typer

from medfuse_cli import __version__
from medfuse_cli.cli import benchmark, evaluate, fuse, models, train
from medfuse_cli.errors import MedfuseError

app = typer.Typer(
    name="medfuse",
    help="Fuse co-registered MRI with SPECT, PET or CT images (LWNet, LYWNet, classical rules).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text is shown as written: [lwnet], [default: ...] stay
)
app.command("fuse")(fuse.fuse)
app.command("evaluate")(evaluate.evaluate)
app.command("models")(models.models)
app.command("train")(train.train)
app.command("benchmark")(benchmark.benchmark)


def _version(value: bool) -> None:
    if value:
        print(f"medfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """medfuse: multimodal medical image fusion."""


def _show_notices() -> None:
    """Library notices (logger ``medfuse_cli``, e.g. an unreachable Hub) as ``notice: …`` lines on
    stderr; a Python user of medfuse configures logging as they like instead."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("notice: %(message)s"))
    logger = logging.getLogger("medfuse_cli")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    """Console-script entry point: run the app, turning MedfuseError into one line."""
    _show_notices()
    try:
        app()
    except MedfuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
