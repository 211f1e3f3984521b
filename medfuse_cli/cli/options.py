"""Options the subcommands share, each declared once so it means one thing everywhere.

Every command that reads pairs (fuse, evaluate, benchmark, train) takes the ones that apply to
it from here: ``--device``, ``--threads``, ``--resize``, ``--chroma``, ``--checkpoint``,
``--weights``, ``--batch-size``, ``--max-pixels``, ``--backend``; and ``--quiet``/``--json`` for
its output.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medfuse_cli.io import DEFAULT_MAX_PIXELS

MODEL = typer.Option("lwnet", "--model", "-m", help="Fuser name (see `medfuse models`).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda (cuda:N); an absent CUDA is an error.")
THREADS: int | None = typer.Option(
    None,
    "--threads",
    min=1,
    max=1024,
    help="CPU threads for torch while fusing [default: the fuser's measured choice: 1 for lwnet and the rules, all cores for lywnet].",
)
BACKEND = typer.Option(
    "torch",
    "--backend",
    help="Where a network runs: torch, or onnxruntime: its ONNX export (as `medfuse export` writes it for the same "
    "weights) in an ONNX Runtime CPU session with --threads intra-op threads; networks only, CPU only; needs "
    "pip install 'medfuse[onnx]'. fuse exports once per checkpoint into a cache ($MEDFUSE_CACHE, else "
    "$XDG_CACHE_HOME/medfuse/onnx, else ~/.cache/medfuse/onnx); benchmark exports and times it per call.",
)
RESIZE = typer.Option(
    False, "--resize", help="Resize the second image to the MRI's size (bicubic) instead of refusing."
)
CHROMA = typer.Option(
    "auto",
    "--chroma",
    help="How to read the second image's colour: auto (colour when >= 2 % of its pixels are coloured), keep, or drop.",
)
CHECKPOINT: str | None = typer.Option(
    None,
    "--checkpoint",
    help="A shipped checkpoint, e.g. lwnet.ct or lywnet.ct (`medfuse models` lists them) [default: chosen per pair from the second image].",
)
WEIGHTS: Path | None = typer.Option(
    None, "--weights", help="A safetensors checkpoint to use instead of the shipped ones."
)
BATCH_SIZE = typer.Option(16, "--batch-size", min=1, help="Pairs fused per call.")
MAX_PIXELS = typer.Option(
    DEFAULT_MAX_PIXELS,
    "--max-pixels",
    min=1,
    help="Refuse an image with more pixels (width x height) than this, read from its header before decoding: a guard against decompression bombs (Pillow's default limit, about 9459x9459). Raise it for large legitimate images.",
)
NUM_PARTS = typer.Option(
    1,
    "--num-parts",
    min=1,
    help="Split a folder run into N parts (every N-th pair of the sorted list), e.g. one per SLURM array task.",
)
PART_ID: int | None = typer.Option(
    None, "--part-id", min=0, help="Which part (0..N-1) of --num-parts this run fuses; required with it."
)
QUIET = typer.Option(
    False, "--quiet", "-q", help="No progress bar or summary line (errors are still printed)."
)
JSON = typer.Option(False, "--json", help="Print a machine-readable JSON summary on stdout.")


class _StdoutConsole(Console):
    """A rich console on stdout whose closed pipe is the CLI's quiet status 141, as for every
    other write (rich's own handling exits with status 1)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def stdout_console() -> Console:
    """The console the commands print tables on (stdout)."""
    return _StdoutConsole()


# soft_wrap: a message is one whole line whatever the terminal's width (or none), so paths in
# ``skipped …`` lines are never split.
stderr = Console(stderr=True, soft_wrap=True)


class LineProgress:
    """Progress as whole lines on stderr, for logs and pipes where a live bar cannot draw.

    The subset of ``rich.progress.Progress`` the commands use (``add_task``, ``advance``,
    ``update``, ``console``, a context manager). A line is printed at each tenth of a task's
    total and at most every 30 s in between, once some work is done (so a command that fails
    on its first item says only its one ``error:`` line).
    """

    def __init__(self, label: str, console: Console, interval: float = 30.0) -> None:
        self.label, self.console, self.interval = label, console, interval
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_: object) -> int:
        task = len(self._tasks)
        self._tasks[task] = {
            "description": description,
            "total": total,
            "completed": 0,
            "tenth": -1,
            "at": 0.0,
        }
        self._report(task)
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        self._tasks[task]["completed"] += advance
        self._report(task)

    def update(
        self, task: int, description: str | None = None, completed: float | None = None, **_: object
    ) -> None:
        state = self._tasks[task]
        if description is not None:
            state["description"] = description
        if completed is not None:
            state["completed"] = completed
        self._report(task)

    def _report(self, task: int) -> None:
        state = self._tasks[task]
        total, done = state["total"], state["completed"]
        if not done:
            return
        tenth = int(10 * done / total) if total else 0
        now = time.monotonic()
        if tenth == state["tenth"] and now - state["at"] < self.interval:
            return
        state["tenth"], state["at"] = tenth, now
        label = self.label.replace("{task.description}", str(state["description"]))
        count = f"{done:g}/{total:g}" if total else f"{done:g}"
        self.console.print(f"{label}: {count}", markup=False, highlight=False)


def progress_bar(label: str, quiet: bool, eta: bool = True) -> Progress | LineProgress:
    """The subcommands' progress on stderr (stdout stays for --json and PNGs): a live bar, gone
    when done, on a terminal; whole lines otherwise (``LineProgress``); nothing when ``quiet``.

    ``label`` may use ``{task.description}`` to show what is being worked on.
    """
    if not quiet and not stderr.is_terminal:
        return LineProgress(label, stderr)
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=stderr, disable=quiet, transient=True)
