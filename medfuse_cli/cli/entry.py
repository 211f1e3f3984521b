"""The ``medfuse`` console script, kept tiny so that Ctrl-C is one line even during start-up.

Importing the CLI (Typer, rich, then torch for most commands) takes seconds; an interrupt in
that time, or at any point of a run, ends it with ``interrupted`` on stderr and status 130.
"""

import sys

# 128 + SIGINT: the status a shell reports for a command stopped by Ctrl-C.
INTERRUPTED_STATUS = 130


def main() -> None:
    """Import and run the CLI (``medfuse_cli.cli.app.main``); an interrupt is one line, status 130."""
    try:
        from medfuse_cli.cli.app import main as run

        run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
