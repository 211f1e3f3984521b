"""The errors medfuse raises for problems a user can fix, each on a standard base class.

Every one is a ``MedfuseError``, so a caller can catch them all at once; each is also the
standard exception of its kind (``ValueError`` for bad input, ``RuntimeError`` for a missing
device, ``OSError`` for an output that cannot be written), so code that already catches those
keeps working. The CLI prints any ``MedfuseError`` as ``error: <message>`` on one line and exits
with status 1; nothing else is shown. This module imports nothing, so every layer may use it.
"""


class MedfuseError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Raise one of the subclasses with a message that says what is wrong and, where possible,
    how to fix it.
    """


class InputError(MedfuseError, ValueError):
    """An image, array, folder or option value that medfuse cannot take whole."""


class CheckpointError(MedfuseError, ValueError):
    """A checkpoint that is missing, not safetensors, corrupt, or does not fit the network."""


class DeviceError(MedfuseError, RuntimeError):
    """A device was asked for that this machine does not have (never a silent fallback)."""


class OutputError(MedfuseError, OSError):
    """An output that cannot be written (exists without ``--overwrite``, folder missing, ...)."""


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def single_line(text: str) -> str:
    """``text`` as one line of plain characters, for a message that must stay one line
    (``error: …``, ``failed NAME: …``) whatever a file name it quotes holds: line breaks are
    written ``\\n``, ``\\r``, ``\\t``, and every other control character (vertical tab, form
    feed, the escape that starts a terminal colour) as ``\\xNN``, so none of them can break the
    line or drive the terminal."""
    return "".join(
        _ESCAPES.get(char)
        or (f"\\x{ord(char):02x}" if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 else char)
        for char in text
    )
