"""``medfuse evaluate``: score fusion methods on folders of pairs, the papers' comparison table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError
from medfuse_cli.output_folders import create_folder, prepare_output_folder, remove_if_empty

if TYPE_CHECKING:
    from medfuse_cli.evaluation.scoring import PairSetResult

_stderr = options.stderr


def evaluate(
    pairdir: Path = typer.Argument(
        ...,
        help="Folder with MRI/ and one of SPECT/, PET/, CT/ (paired by file name), or a parent of such folders.",
    ),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        help="[LABEL=]NAME[@CHECKPOINT|@FILE.safetensors]: a registered fuser to run and score, "
        "e.g. lwnet, lwnet@lwnet.ct, authors=lywnet@weights.safetensors (repeatable; see `medfuse models`).",
    ),
    fused: list[str] | None = typer.Option(
        None, "--fused", help="LABEL=DIR: score images another tool fused, same file names (repeatable)."
    ),
    metrics: str = typer.Option(
        "paper",
        "--metrics",
        help="paper (the LWNet and LYWNet papers' metrics), lwnet, lywnet, all, or names like SSIM,PSNR,Qabf.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for per_image.csv, summary.csv, summary.md and summary.json."
    ),
    plot: bool = typer.Option(
        False, "--plot", help="With --out: box plots and a radar chart (needs matplotlib)."
    ),
    resize: bool = options.RESIZE,
    chroma: str = options.CHROMA,
    max_pixels: int = options.MAX_PIXELS,
    checkpoint: str | None = options.CHECKPOINT,
    weights: Path | None = options.WEIGHTS,
    device: str = options.DEVICE,
    threads: int | None = options.THREADS,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Score fused images with the field's metrics: mean ± std per method, the best marked.

    Without --model or --fused the shipped networks (but LYWNet, minutes per folder on a CPU: name it to run it) and the classical rules are scored; networks without an available checkpoint are skipped with a note. Metrics see 8-bit Y planes: A = MRI, B = Y of the functional image (or the CT), F = Y of the fused image.
    """
    # Imported here, not at the top: the metrics pull in scipy, which every other command
    # would then pay for at start-up.
    from medfuse_cli.devices import resolve_device
    from medfuse_cli.evaluation import plots, reports, scoring, tables
    from medfuse_cli.evaluation.methods import choose_methods, parse_metrics
    from medfuse_cli.pairs import find_pair_sets
    from medfuse_cli.pipeline import check_chroma

    check_chroma(chroma)
    metric_names = parse_metrics(metrics)
    if plot and out is None:
        raise InputError("--plot writes files: give --out DIR as well")
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder: {out}")
    if plot:
        plots.require_matplotlib()
    pair_sets, parent = find_pair_sets(pairdir, scoring.SPLIT)
    methods, named = choose_methods(model or [], fused or [], checkpoint, weights)
    torch_device = resolve_device(device)
    total = sum(len(s.pairs) for s in pair_sets) * len(methods)

    created: list[Path] = create_folder(out) if out is not None else []
    try:  # an --out that cannot be written fails here, before minutes of scoring
        if out is not None:
            prepare_output_folder(out)
        with options.progress_bar("scoring", quiet) as progress:
            task = progress.add_task("evaluate", total=total)

            def skipped(label: str, reason: str) -> None:
                if as_json and not quiet:  # otherwise the tables say so
                    progress.console.print(f"skipped {label}: {reason}", markup=False, soft_wrap=True)

            results = scoring.evaluate(
                pair_sets,
                methods,
                metric_names,
                torch_device,
                resize=resize,
                chroma=chroma,
                max_pixels=max_pixels,
                threads=threads,
                methods_named=named,
                on_progress=lambda n: progress.advance(task, n),
                on_skip=skipped,
            )

        if as_json:
            print(json.dumps(tables.results_json(results, parent)))
        else:
            console = options.stdout_console()
            for result in results:
                console.print(_table(result))
                for label, reason in result.skipped.items():
                    console.print(Text(f"skipped {label}: {reason}", style="dim"), soft_wrap=True)
        if out is not None:
            written = reports.write_reports(results, parent, out)
            if plot:
                written += plots.write_plots(results, out)
            if not quiet:
                _stderr.print(f"wrote {len(written)} files to {out}", markup=False)
    finally:  # a run that wrote nothing leaves no folder it made
        remove_if_empty(created)


def _table(result: PairSetResult) -> Table:
    """One rich table: a row per metric (with its direction), a column per method, cells
    "mean / ± std", the best method's cell in bold green with *. Fits 80 columns for ~6 methods."""
    from medfuse_cli.evaluation.tables import arrow, format_value

    table = Table(
        title=f"{result.pair_set.label} ({len(result.pair_set.pairs)} pairs)",
        caption="mean ± std · ↑/↓ higher/lower is better · * best",
    )
    table.add_column("metric")
    for label in result.methods:
        table.add_column(Text(label), justify="right")
    for metric in result.metrics:
        best = result.best(metric)
        cells = []
        for label, scores in result.methods.items():
            text = f"{format_value(scores.mean(metric))}\n± {format_value(scores.std(metric))}"
            cells.append(
                Text(text.replace("\n", " *\n", 1), style="bold green") if best == label else Text(text)
            )
        table.add_row(f"{metric} {arrow(metric)}", *cells)
    return table
