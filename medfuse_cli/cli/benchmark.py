"""``medfuse benchmark``: latency, throughput, FLOPs and memory of every fuser on this machine."""

from __future__ import annotations

import json

import torch
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from medfuse_cli.bench import RANDOM_WEIGHTS, BenchRow, BenchSettings, run_benchmark
from medfuse_cli.cli import options
from medfuse_cli.devices import resolve_device
from medfuse_cli.errors import MedfuseError
from medfuse_cli.fusers.registry import list_fusers

_stderr = options.stderr


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MedfuseError(f"--batch takes comma-separated positive integers, got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise MedfuseError(f"--batch takes comma-separated positive integers, got '{text}'")
    return sizes


def benchmark(
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Fuser to time (repeatable; default: every registered fuser)."
    ),
    device: str = options.DEVICE,
    size: int = typer.Option(256, "--size", min=4, help="Side of the square test images, in pixels."),
    batch: str = typer.Option("1,16", "--batch", help="Comma-separated batch sizes."),
    warmup: int = typer.Option(3, "--warmup", min=1, help="Untimed calls before timing each row."),
    repeat: int = typer.Option(20, "--repeat", min=2, help="Timed calls per row (at most)."),
    max_seconds: float = typer.Option(
        30.0, "--max-seconds", min=0.0, help="Time budget per row: stop repeating after it (min. 2 calls)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: all cores)."
    ),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Time each fuser per call and per pair, and the whole read-fuse-write flow on the example pair."""
    torch_device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    names = model or [spec.name for spec in list_fusers()]
    settings = BenchSettings(warmup=warmup, repeat=repeat, max_seconds=max_seconds)
    batches = _batch_sizes(batch)
    with options.progress_bar("timing {task.description}", quiet, eta=False) as progress:
        task = progress.add_task("", total=len(names) * (len(batches) + 1))
        started = [0]

        def starting(row: str) -> None:
            progress.update(task, description=row, completed=started[0])
            started[0] += 1

        rows = run_benchmark(names, torch_device, size, batches, settings, on_row=starting)
    if as_json:
        payload = {
            "device": str(torch_device),
            "threads": torch.get_num_threads(),
            "results": [row.to_json() for row in rows],
        }
        print(json.dumps(payload, indent=2))
    else:
        console = Console()
        if not console.is_terminal:
            console.width = 120  # a file or pipe gets every column whole
        console.print(_table(rows, torch_device))
    if not quiet and any(row.weights == RANDOM_WEIGHTS for row in rows):
        _stderr.print(
            "note: networks without a checkpoint were timed with random weights: their speed is "
            "real, they say nothing about fusion quality."
        )


def _table(rows: list[BenchRow], device: torch.device) -> Table:
    table = Table(
        title=f"medfuse benchmark on {device}, {torch.get_num_threads()} thread(s)",
        caption=(
            "ms: median and p90 per call of n timed calls; +io: read, colour, fuse and write the "
            "example PNG pair; * random weights, timed for speed only"
        ),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("model")
    for column in ("batch", "size", "params", "GFLOP", "ms", "p90", "pairs/s", "GFLOP/s", "peak MB", "n"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.model + ("*" if row.weights == RANDOM_WEIGHTS else ""),
            str(row.batch),
            f"{row.height}²" if row.height == row.width else f"{row.height}×{row.width}",
            f"{row.params:,}",
            f"{row.gflops_per_pair:.3g}",
            _short(row.median_ms),
            _short(row.p90_ms),
            _short(row.pairs_per_s),
            _short(row.gflops_per_s),
            _short(row.peak_mem_mb),
            str(row.calls),
        )
    return table


def _short(value: float) -> str:
    """Three significant digits, without switching to exponents below a million."""
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
