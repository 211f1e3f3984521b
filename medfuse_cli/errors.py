"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MedfuseError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Raise it with a message that says what is wrong and, where possible, how to fix it.
    The CLI prints ``error: <message>`` and exits with status 1; nothing else is shown.
    """
