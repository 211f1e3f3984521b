"""``medfuse benchmark``: latency, throughput, FLOPs and memory of every fuser on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError

if TYPE_CHECKING:  # torch and the zoo are imported when the command runs, not for --help
    import torch

    from medfuse_cli.bench.plan import BenchRow

_stderr = options.stderr


# The largest batch × side² a row may ask for: 2^26 pixels is 256 MiB per float32 input tensor,
# far above any real use (16 pairs of 2048²) and far below what would exhaust the machine.
MAX_PIXELS_PER_CALL = 1 << 26


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--batch takes comma-separated positive integers, got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise InputError(f"--batch takes comma-separated positive integers, got '{text}'")
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
    volume_slices: int = typer.Option(
        0,
        "--volume-slices",
        min=0,
        help="Also time the whole volume flow (read two .nii.gz, window, fuse, write) on --size² × N slices; 0: off.",
    ),
    threads: int | None = options.THREADS,
    backend: str = options.BACKEND,
    checkpoint: str | None = options.CHECKPOINT,
    weights: Path | None = options.WEIGHTS,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Time each fuser per call and per pair, and the whole read-fuse-write flow on the example pair.

    --checkpoint and --weights apply to the one network model benchmarked (the rules beside it
    take none). --backend onnxruntime times the networks' ONNX exports instead (rows
    <name>+onnxruntime, per call only; without -m, every network; needs the onnx extra).
    """
    from medfuse_cli.bench.measure import TimingBudget
    from medfuse_cli.bench.plan import BenchPlan, check_backend, run_benchmark
    from medfuse_cli.devices import resolve_device
    from medfuse_cli.fusers import list_fusers

    batches = _batch_sizes(batch)
    if max(batches) * size * size > MAX_PIXELS_PER_CALL:
        raise InputError(
            f"--batch {max(batches)} × --size {size}² is {max(batches) * size * size:,} pixels per call, above "
            f"the {MAX_PIXELS_PER_CALL:,} a benchmark row may use; lower one of them"
        )
    everything = [spec.name for spec in list_fusers() if backend != "onnxruntime" or spec.needs_weights]
    plan = BenchPlan(
        models=tuple(model or everything),
        device=resolve_device(device),
        size=size,
        batches=tuple(batches),
        budget=TimingBudget(warmup=warmup, repeat=repeat, max_seconds=max_seconds),
        threads=threads,
        checkpoint=checkpoint,
        weights=weights,
        volume_slices=volume_slices,
        backend=backend,
    )
    check_backend(plan)
    # Rows per fuser: one per batch, then the whole flow (+io, +volume); onnxruntime: its export, then batches.
    steps = len(plan.batches) + 1 + (bool(volume_slices) if backend == "torch" else 0)
    with options.progress_bar("timing {task.description}", quiet, eta=False) as progress:
        task = progress.add_task("", total=len(plan.models) * steps)
        started = [0]

        def starting(row: str) -> None:
            progress.update(task, description=row, completed=started[0])
            started[0] += 1

        rows = run_benchmark(plan, on_row=starting)
    if as_json:
        print(json.dumps({"device": str(plan.device), "results": [row.to_json() for row in rows]}, indent=2))
    else:
        console = options.stdout_console()
        if not console.is_terminal:
            console.width = 120  # a file or pipe gets every column whole
        console.print(_table(rows, plan.device))
    if not quiet and any(row.untrained for row in rows):
        _stderr.print(
            "note: networks without a checkpoint were timed with random weights: their speed is "
            "real, they say nothing about fusion quality."
        )


def _table(rows: list[BenchRow], device: torch.device) -> Table:
    table = Table(
        title=f"medfuse benchmark on {device}",
        caption=(
            "ms: median and p90 per call of n timed calls; threads: torch CPU threads of the row (ONNX Runtime's "
            "intra-op threads for +onnxruntime); "
            "+io: read, colour, fuse and write the example PNG pair; +volume: the same for a NIfTI pair of "
            "'batch' slices; +onnxruntime: the network's ONNX export in ONNX Runtime; * random weights, timed for "
            "speed only"
        ),
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    table.add_column("model")
    columns = (
        "batch",
        "size",
        "threads",
        "params",
        "GFLOP",
        "ms",
        "p90",
        "pairs/s",
        "GFLOP/s",
        "peak MB",
        "n",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.model + ("*" if row.untrained else ""),
            str(row.batch),
            f"{row.height}²" if row.height == row.width else f"{row.height}×{row.width}",
            str(row.threads),
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
