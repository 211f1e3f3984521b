"""How ``medfuse evaluate`` writes its files (``--out``, ``--report``): each one atomically, an
existing one replaced only with ``--overwrite``, and all of a failed run's files removed again,
so a run leaves its outputs whole or absent."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from medfuse_cli.atomic import write_atomically
from medfuse_cli.errors import OutputError
from medfuse_cli.io import encode_png


def refuse_existing(folder: Path, names: Iterable[str], option: str) -> None:
    """Refuse, before any work, a folder that already holds some of the files a run would write.

    Args:
        folder: The output folder (it may not exist yet).
        names: The files (or sub-folders) the run writes there, relative to ``folder``.
        option: The option that names the folder, for the message (``--out``, ``--report``).

    Raises:
        OutputError: some of ``names`` exist; the message counts them, names up to three and
            says that ``--overwrite`` replaces them.
    """
    present = [name for name in dict.fromkeys(names) if (folder / name).exists()]
    if present:
        raise OutputError(
            f"{option}: {len(present)} output file(s) exist in {folder} (e.g. {', '.join(present[:3])}); "
            "pass --overwrite to replace them"
        )


class OutputFiles:
    """The files one run writes: each atomically, published only under a free name unless
    ``overwrite``, and removed again with ``discard`` when the run fails. ``write`` may be
    called from several threads at once (a report writes on a helper thread).

    Args:
        overwrite: Replace files that exist (``--overwrite``); otherwise a file that exists when
            it is published, even one another run wrote meanwhile, is kept and the write fails.
    """

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.written: list[Path] = []
        self._created: list[Path] = []
        self._lock = threading.Lock()  # for the two lists and the folders being made

    def write(self, path: Path, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp)`` on a temporary file beside ``path``, then publish it as ``path``.

        Missing parent folders are created (and removed by ``discard`` if left empty).

        Returns:
            ``path``.

        Raises:
            OutputError: ``path`` exists without ``overwrite``, or it cannot be written (full
                disk, permissions); nothing is left at ``path`` by this call.
        """
        with self._lock:
            self._make_parents(path.parent)
        try:
            write_atomically(path, write, overwrite=self.overwrite)
        except FileExistsError:
            raise OutputError(f"{path} exists (pass --overwrite to replace it)") from None
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        with self._lock:
            self.written.append(path)
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

    def discard(self) -> None:
        """Remove every file written so far and the folders made for them (those left empty).
        Call it once no other thread writes."""
        for path in reversed(self.written):
            path.unlink(missing_ok=True)
        self.written.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):  # it holds files this run did not write
                folder.rmdir()
        self._created.clear()

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            try:
                made.mkdir()
            except FileExistsError:  # made meanwhile by someone else: not ours to remove
                continue
            except OSError as exc:
                raise OutputError(f"cannot create {made}: {exc.strerror or exc}") from None
            self._created.append(made)
