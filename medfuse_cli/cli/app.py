"""The ``medfuse`` Typer app, and ``main``, which runs it for the console script (``entry.main``).

Subcommands parse arguments, call the core and print; every user-facing problem is raised as
``MedfuseError`` and printed here as one line on stderr with exit status 1, as are usage errors
(Click's, which would otherwise print a usage block with status 2). No traceback reaches the user
for bad input. A reader that closes our
standard output early (``| head``) ends the run quietly with status 141; an interrupt is left
to ``entry.main``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

try:  # Typer 0.2x carries its own copy of Click, whose exceptions are not click's
    from typer._click import exceptions as click_exceptions
except ImportError:  # older Typer runs on click itself
    from click import exceptions as click_exceptions

from medfuse_cli import __version__
from medfuse_cli.cli import benchmark, evaluate, export, fuse, models, train
from medfuse_cli.errors import InputError, MedfuseError, single_line
from medfuse_cli.io import write_stdout

# 128 + SIGPIPE: the status a shell reports for a writer whose reader went away (`| head`).
BROKEN_PIPE_STATUS = 141


class _Carried(BaseException):
    """An exception carried past Typer, which would turn an interrupt into a silent exit 130,
    a closed output pipe into exit 1 and a usage error into a usage block with status 2;
    ``main`` raises it again as itself."""

    def __init__(self, exception: BaseException) -> None:
        super().__init__(exception)
        self.exception = exception


# A bare `medfuse` raises this usage error to show the help (Click >= 8.2); it stays Click's.
_HELP_REQUESTS = getattr(click_exceptions, "NoArgsIsHelpError", ())


@contextmanager
def _carried_past_typer() -> Iterator[None]:
    try:
        yield
    except (KeyboardInterrupt, BrokenPipeError) as exc:
        raise _Carried(exc) from None
    except click_exceptions.UsageError as exc:  # a bad option or argument: one line from ``main``
        if isinstance(exc, _HELP_REQUESTS):
            raise  # bare `medfuse`: Click prints the help
        raise _Carried(exc) from None


class _Group(TyperGroup):
    """Typer's command group, except that interrupts and closed pipes reach ``main``, from
    parsing (which takes tens of milliseconds) as from running a command."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with _carried_past_typer():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with _carried_past_typer():
            return super().invoke(ctx)


app = typer.Typer(
    name="medfuse",
    cls=_Group,
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
app.command("export")(export.export)


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


class _OneLineNotice(logging.Formatter):
    """A notice on one line, whatever file name it quotes."""

    def format(self, record: logging.LogRecord) -> str:
        return single_line(super().format(record))


def _show_notices() -> None:
    """Library notices (logger ``medfuse_cli``, e.g. an unreachable Hub) as ``notice: …`` lines on
    stderr; a Python user of medfuse configures logging as they like instead."""
    logger = logging.getLogger("medfuse_cli")
    for old in [h for h in logger.handlers if getattr(h, "medfuse_notices", False)]:
        logger.removeHandler(old)  # main() ran before in this process: one line per notice, on today's stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineNotice("notice: %(message)s"))
    handler.medfuse_notices = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    """Run the app; a MedfuseError, a usage error (an option value of the wrong type, a missing
    argument), or an OSError no command explained (a report folder that cannot be written, a
    full disk), becomes one ``error: …`` line and status 1.

    Standard output is flushed here rather than at interpreter exit, so that a failure to write
    it is handled like any other: a full disk is an error, a closed pipe a quiet status 141.

    Raises:
        KeyboardInterrupt: Ctrl-C (the console script reports it).
    """
    _show_notices()
    try:
        try:
            _refuse_empty_words(sys.argv[1:])
            app()
        except _Carried as carried:
            raise carried.exception from None
        finally:
            _flush_stdout()
    except BrokenPipeError:
        sys.exit(BROKEN_PIPE_STATUS)
    except MedfuseError as exc:
        print(f"error: {single_line(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except click_exceptions.UsageError as exc:
        print(f"error: {single_line(_usage_message(exc))}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a file-system failure no command turned into its own message
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {single_line(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        sys.exit(1)


def _refuse_empty_words(words: list[str]) -> None:
    """Refuse an empty word on the command line (``--weights ""``, ``-o "$UNSET"``, ``--out=``).

    Why: Click turns an empty path into ``Path("")``, which is the current folder ``.``; a
    command would then read or write there and its error would name ``.``, not the empty value.
    No option of medfuse takes an empty value. ``--help`` anywhere still shows the help.

    Raises:
        InputError: naming the option of an empty ``--option=``, else the empty word's position
            and the word before it.
    """
    if "--help" in words:
        return
    for position, word in enumerate(words, start=1):
        option, equals, value = word.partition("=")
        if option.startswith("--") and equals and not value:
            raise InputError(f"empty value in {word}: give one or leave the option out")
        if word == "":
            after = f", after {words[position - 2]!r}" if position > 1 else ""
            raise InputError(
                f"empty argument (word {position} after medfuse{after}): give a value or leave it out"
            )


def _usage_message(exc: click_exceptions.UsageError) -> str:
    """Click's message for a bad option value, a missing argument or an unknown option, on one
    line, with the command whose ``--help`` explains it."""
    message = " ".join(exc.format_message().split())
    return f"{message} (see '{_command_path(exc)} --help')"


def _command_path(exc: click_exceptions.UsageError) -> str:
    """The command the error is about: Click's context when it has one; otherwise (an option
    whose value is missing fails before the context is attached) the command named first on
    the command line, or ``medfuse`` itself."""
    if exc.ctx:
        return exc.ctx.command_path
    words = [word for word in sys.argv[1:] if not word.startswith("-")]
    names = {command.name for command in app.registered_commands}
    return f"medfuse {words[0]}" if words and words[0] in names else "medfuse"


def _flush_stdout() -> None:
    """Flush standard output; when that fails, point it at /dev/null before raising, so that the
    interpreter's own flush at exit has nothing left to fail on (and prints no second error)."""
    try:
        write_stdout()
    except OSError:  # BrokenPipeError, or OutputError for any other failure
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise
