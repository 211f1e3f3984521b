"""Write files so that no reader, crash or concurrent run ever sees a half-written or clobbered one.

Every write goes to a temporary file in the destination's folder, named
``.<name>.<host>.<pid>.<random>.tmp`` (host: 8 hex digits of a hash of the machine's name) so
that it says which process on which machine writes it, and is then published
under its real name in one step: with ``overwrite``, ``os.replace``; without, only if the name
is still free at that very moment (``_publish_new``), so a file that another run wrote after
the caller last looked is never replaced. A run killed mid-write (SIGKILL, power loss) leaves
its temporary file behind; ``prepare_folder`` removes those whose process, on this machine, is
gone (a shared folder written by jobs on several machines, a SLURM array, keeps the others').

This module imports nothing from medfuse: it raises the ``OSError`` the file system gave
(``FileExistsError`` for a name that is taken), and callers word it for their users.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

# What ``os.link`` fails with where a file system has no hard links (FAT, some FUSE and
# network file systems) rather than because the folder cannot be written.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.ENOSYS}
_TEMPORARY = re.compile(r"\..+?\.(?:(?P<host>[0-9a-f]{8})\.)?(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
# This machine in temporary names: process ids only mean something on the machine that made them.
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def write_atomically(path: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then publish it as ``path``.

    Readers see no file or the complete one, never a partial write; whatever happens (an
    error, an interrupt), the temporary file is gone when this returns or raises.

    Args:
        path: the file to write; its folder must exist.
        write: writes the whole content to the path it is given.
        overwrite: replace ``path`` if it exists. Without it, whether ``path`` exists is decided
            when the file is published, not before, so a file that appeared in the meantime
            (another run writing the same name) is kept and this raises ``FileExistsError``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false (nothing was changed).
        OSError: the folder cannot be written, the disk is full, ... (nothing was changed).
    """
    path = Path(path)
    tmp = _create_temporary(path)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a link, the second name; after an error, the partial file


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` ready for ``write_atomically``: clear what killed runs left, check access.

    Removes the temporary files of writers that no longer run (only names of this module's
    pattern, made on this machine, whose process id is gone; a concurrent run's files, and any
    other machine's, are left alone), then creates and removes one, so that a folder that cannot
    be written fails here, once, before any work. (Names without a host part come from earlier
    versions, which wrote them on one machine: they are judged by their process id alone.)

    Args:
        folder: an existing folder.

    Raises:
        OSError: a file cannot be created in ``folder`` (read-only, no permission, ...).
    """
    if os.name == "posix":  # elsewhere os.kill(pid, 0) does not ask, it terminates
        for entry in os.scandir(folder):
            match = _TEMPORARY.fullmatch(entry.name)
            ours = match is not None and match["host"] in (None, _HOST)
            if ours and entry.is_file(follow_symlinks=False) and _process_is_gone(int(match["pid"])):
                Path(entry.path).unlink(missing_ok=True)
    _create_temporary(Path(folder) / "probe").unlink()


def _create_temporary(path: Path) -> Path:
    """A new, empty file beside ``path`` named for this process, with the permissions open() gives."""
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def _process_is_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists (another user's process counts as running)."""
    try:
        os.kill(pid, 0)  # signal 0 delivers nothing: it only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be
        pass
    return False


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s file the name ``path`` only if that name is free, decided atomically.

    A hard link fails with EEXIST when the name exists, on local and network file systems
    alike (the caller removes ``tmp`` afterwards). Where hard links are not supported, Linux's
    ``renameat2(RENAME_NOREPLACE)`` is just as atomic. Where neither is available (a file
    system without both, or another OS), the check and the rename are two steps: a file that
    appears between them is replaced. That is the best this system offers.

    Raises:
        FileExistsError: ``path`` exists.
    """
    try:
        os.link(tmp, path)
        return
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:  # e.g. EEXIST: the name is taken
            raise
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: this file system lacks the flag
            raise OSError(code, os.strerror(code), str(path))  # EEXIST gives FileExistsError
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    os.rename(tmp, path)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """The C library's ``renameat2`` (Linux, glibc 2.28+ or musl 1.2.2+), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
