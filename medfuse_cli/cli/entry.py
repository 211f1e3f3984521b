"""The ``medfuse`` console script, kept tiny so that Ctrl-C is one line even during start-up.

Importing the CLI (Typer, rich, then torch for most commands) takes seconds; an interrupt in
that time, or at any point of a run, ends it with ``interrupted`` on stderr and status 130.
"""

import io
import os
import signal
import sys
import time

# 128 + SIGINT: the status a shell reports for a command stopped by Ctrl-C.
INTERRUPTED_STATUS = 130
# How long a failing rank other than 0 waits before exiting under torchrun (see run_as_module).
RANK_0_GRACE_SECONDS = 3.0


# The commands that load torch; ``--help`` does not.
_TORCH_COMMANDS = {"fuse", "evaluate", "train", "benchmark", "export"}


def _import_torch_holding_interrupts() -> None:
    """Import torch with SIGINT held back, for the commands that need it.

    A Ctrl-C that lands while torch's C++ extension initialises can surface as a C++ exception
    there, and C++ then aborts the process (``terminate called ...``, status 134) instead of
    Python raising KeyboardInterrupt. Held back, the signal is delivered the moment the import is
    done, at a point where Python turns it into the usual ``interrupted`` line.
    """
    words = sys.argv[1:]
    if (
        not words
        or words[0] not in _TORCH_COMMANDS
        or "--help" in words
        or not hasattr(signal, "pthread_sigmask")
    ):
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def main() -> None:
    """Import and run the CLI (``medfuse_cli.cli.app.main``); an interrupt is one line, status 130."""
    try:
        _import_torch_holding_interrupts()
        from medfuse_cli.cli.app import main as run

        run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)


def run_as_module() -> None:
    """``python -m medfuse_cli``: ``main``, and under torchrun two differences.

    A process that torchrun started (``medfuse train`` with DistributedDataParallel) ends with
    ``os._exit`` once its streams are flushed: the interpreter's own teardown then meets gloo's
    threads still alive, and C++ aborts a run that has finished (``terminate called without an
    active exception``, status 134, which a scheduler reports as a failed job). And only rank 0
    speaks: the other ranks' usage errors and agreed failures (rank 0 prints the one ``error:``
    line) are dropped; anything else they print (a crash) is passed on.
    """
    started_by_torchrun = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
    quiet_rank = started_by_torchrun and os.environ.get("RANK", "0") != "0"
    held = io.StringIO()
    if quiet_rank:
        sys.stderr = held
    code: object = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        if quiet_rank:
            sys.stderr = sys.__stderr__
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if quiet_rank and status not in (0, 1, 2):
        sys.stderr.write(held.getvalue())
    if quiet_rank and status != 0:
        # torchrun stops every process as soon as one fails: give rank 0, failing the same way,
        # the moment it needs to print the run's one error line.
        time.sleep(RANK_0_GRACE_SECONDS)
    if not started_by_torchrun:
        sys.exit(code)
    if not isinstance(code, int | None):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
