"""Output folders of the commands that write many files (fuse's folder runs, evaluate --out,
a training run): created with their missing parents, checked writable before any work, removed
when a failed run leaves them empty."""

from __future__ import annotations

import itertools
from pathlib import Path

from medfuse_cli.atomic import prepare_folder
from medfuse_cli.errors import OutputError


def create_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those this call created, innermost first.

    Raises:
        OutputError: a folder cannot be created (a parent is a file, read-only, ...).
    """
    missing = list(itertools.takewhile(lambda f: not f.exists(), (folder, *folder.parents)))
    created: list[Path] = []
    for candidate in reversed(missing):
        try:
            candidate.mkdir()
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            continue
        except OSError as exc:
            remove_if_empty(created[::-1])
            raise OutputError(f"cannot create the output folder {candidate}: {exc.strerror or exc}") from None
        created.append(candidate)
    return created[::-1]


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders a run created (innermost first) as long as they are empty, so a run that
    wrote nothing (every pair failed, an error, an interrupt) leaves no empty folder behind."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote something
            return


def prepare_output_folder(folder: Path) -> None:
    """``medfuse_cli.atomic.prepare_folder`` (clear killed runs' temporary files, check access),
    with a folder that cannot be written said in one line before any work."""
    try:
        prepare_folder(folder)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}") from None
