"""How ``medfuse evaluate`` writes its files (``--out``, ``--report``): each one atomically under a
name that is unique in its folder, an existing one replaced only with ``--overwrite``, and a
failed run's files removed again, so a run leaves its outputs whole or absent and an old output
as it was."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import OutputError
from medfuse_cli.io import encode_png
from medfuse_cli.output_folders import create_folder


def file_names(names: Iterable[str]) -> dict[str, str]:
    """A file-safe name per distinct name, the one naming rule of every file and folder
    ``evaluate`` names after a label, a pair or a method (images, plots).

    Names are reduced to letters, digits, ``-`` and ``_`` (``harvard/CT-MRI`` gives
    ``harvard_CT-MRI``); where two reduce alike, even only in case (a case-insensitive file
    system), the later ones get ``-2``, ``-3``, ... in the order given.

    Returns:
        ``{name: file-safe name}``, the values distinct case-insensitively.
    """
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in slugs:
            continue
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "_"
        slug, number = base, 1
        while slug.lower() in taken:
            number += 1
            slug = f"{base}-{number}"
        taken.add(slug.lower())
        slugs[name] = slug
    return slugs


def refuse_existing(folder: Path, names: Iterable[str], option: str, overwrite: bool) -> None:
    """Refuse, before any work, a folder where some of the files a run writes exist (unless
    ``overwrite``) or where a folder has the name of one of them (always: it cannot be replaced).

    Args:
        folder: The output folder (it may not exist yet).
        names: The files the run writes there, relative to ``folder``.
        option: The option that names the folder, for the message (``--out``).
        overwrite: Whether existing files are to be replaced (``--overwrite``).

    Raises:
        OutputError: the message counts the files, names up to three and says that
            ``--overwrite`` replaces them; or it names the folder in a file's place.
    """
    names = list(dict.fromkeys(names))
    folders = [name for name in names if (folder / name).is_dir() and not (folder / name).is_symlink()]
    if folders:
        raise OutputError(f"{option}: {folder / folders[0]} is a folder where a file is to be written")
    present = [name for name in names if os.path.lexists(folder / name)]
    if present and not overwrite:
        raise OutputError(
            f"{option}: {len(present)} output file(s) exist in {folder} (e.g. {', '.join(present[:3])}); "
            "pass --overwrite to replace them"
        )


class OutputFiles:
    """The files one run writes, each atomically; ``write`` may be called from several threads
    at once (a report writes on a helper thread).

    Without ``overwrite`` a file is published as it is written, under a free name only (one that
    exists when it is published, even one another run wrote meanwhile, is kept and the write
    fails). With ``overwrite`` the files are held back under temporary names and replace the
    existing ones only at ``commit``, all at once, so a run that fails leaves the old files as
    they were. ``discard`` removes what a failed run wrote.

    Args:
        overwrite: Replace files that exist (``--overwrite``).
    """

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.written: list[Path] = []  # every file written, under its own name
        self._published: list[Path] = []  # files published that did not exist before
        self._pending: list[tuple[Path, Path]] = []  # (temporary, its name), until commit
        self._created: list[Path] = []
        self._lock = threading.Lock()  # for the lists and the folders being made

    def write(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp)`` on a temporary file beside ``path``, then publish it as ``path``
        (with ``overwrite``: at ``commit``).

        Missing parent folders are created (and removed by ``discard`` if left empty).

        Returns:
            ``path``.

        Raises:
            OutputError: ``path`` exists without ``overwrite``, or it cannot be written (full
                disk, permissions); nothing is left at ``path`` by this call.
        """
        with self._lock:
            self._make_parents(path.parent)
        # A name of atomic's pattern, so a killed run's file is cleared by the next run's check.
        held = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        target = held if self.overwrite else path
        try:
            write_atomically(target, write, overwrite=False)
        except FileExistsError:
            raise OutputError(f"{path} exists (pass --overwrite to replace it)") from None
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        with self._lock:
            self.written.append(path)
            if self.overwrite:
                self._pending.append((held, path))
            else:
                self._published.append(path)
        return path

    def write_text(self, path: Path, text: str) -> Path:
        """Write ``text`` as UTF-8; a file name that is not UTF-8 (surrogate escapes) is written
        back as the bytes it was. Raises as ``write``."""
        return self.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))

    def write_png(self, path: Path, pixels: np.ndarray) -> Path:
        """Write an 8-bit PNG of ``pixels``: float (H, W) gray or (H, W, 3) RGB in [0, 1].
        Raises as ``write``."""
        data = encode_png(pixels, 8)
        return self.write(path, lambda tmp: tmp.write_bytes(data))

    def commit(self) -> None:
        """Publish the files held back (``overwrite``), each replacing the file of its name.
        Renames only: it needs no disk space. Call it once the run has succeeded.

        Raises:
            OutputError: a file cannot be renamed (the ones not yet published are removed).
        """
        pending, self._pending = self._pending, []
        for index, (held, path) in enumerate(pending):
            try:
                os.replace(held, path)
            except OSError as exc:
                for rest, _ in pending[index:]:
                    rest.unlink(missing_ok=True)
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        """Remove every file written and not yet committed, the files published that did not
        exist before, and the folders made for them (those left empty); files that existed are
        left as they were. Call it once no other thread writes."""
        for held, _ in self._pending:
            held.unlink(missing_ok=True)
        self._pending.clear()
        for path in reversed(self._published):
            path.unlink(missing_ok=True)
        self._published.clear()
        self.written.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # it holds files this run did not write
                folder.rmdir()
        self._created.clear()

    def _make_parents(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, remembered outermost first for clean-up."""
        self._created.extend(reversed(create_folder(folder)))
