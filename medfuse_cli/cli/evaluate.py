"""``medfuse evaluate``: score fusion methods on folders of pairs, the papers' comparison table."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from medfuse_cli.cli import options
from medfuse_cli.errors import InputError, single_line
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
        "e.g. lwnet, lwnet@lwnet.ct, authors=lywnet@weights.safetensors (repeatable; see `medfuse models`). "
        "After @, a shipped checkpoint's name wins over a file of that name; ./NAME names the file.",
    ),
    fused: list[str] | None = typer.Option(
        None, "--fused", help="LABEL=DIR: score images another tool fused, same file names (repeatable)."
    ),
    metrics: str = typer.Option(
        "paper",
        "--metrics",
        help="paper (the LWNet and LYWNet papers' metrics), lwnet, lywnet, balance (per-source terms), all, or names like SSIM,PSNR,Qabf.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for per_image.csv, summary.csv, summary.md and summary.json."
    ),
    plot: bool = typer.Option(
        False, "--plot", help="With --out: box plots and a radar chart beside the tables."
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Folder for an HTML report that opens offline: index.html with the summary, the plots, a gallery "
        "of fused images with magnified crops and a sortable per-image table, beside the images, the plots "
        "and the --out tables it shows (so it needs neither --out nor --plot). Outside the pair folder "
        "and the --fused folders.",
    ),
    gallery_pairs: list[str] | None = typer.Option(
        None,
        "--gallery-pairs",
        metavar="NAME,...",
        help="With --report: pairs (file stems, comma-separated, repeatable) the gallery shows besides the "
        "best, median and worst.",
    ),
    gallery_metric: str | None = typer.Option(
        None,
        "--gallery-metric",
        metavar="METRIC",
        help="With --report: the metric that picks the gallery's best, median and worst pairs "
        "[default: the first of --metrics].",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the files --out writes where they exist, and a report in the --report folder whole: "
        "its index.html, tables, plots, images/ and crops/, the old report's files the new one does not "
        "write included (the folder's other files are kept). Without it they are refused before any "
        "scoring; a run that fails leaves them as they were.",
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

    Without --model or --fused the shipped networks (but LYWNet, minutes per folder on a CPU: name it to run it) and the classical rules are scored; networks without an available checkpoint are skipped with a note. Metrics see 8-bit Y planes: A = MRI, B = Y of the functional image (or the CT), F = Y of the fused image. --out writes the tables (with --plot, the figures); --report writes a page to look at, with its own copy of both.
    """
    # Imported here, not at the top: the metrics pull in scipy, which every other command
    # would then pay for at start-up.
    from medfuse_cli.devices import resolve_device
    from medfuse_cli.evaluation import plots, reports, scoring, tables
    from medfuse_cli.evaluation.files import OutputFiles, refuse_existing
    from medfuse_cli.evaluation.gallery import check_named_pairs, gallery_metric_of
    from medfuse_cli.evaluation.methods import choose_methods, parse_metrics
    from medfuse_cli.evaluation.report_folder import PAGE, ReportFolder, check_report_folder
    from medfuse_cli.evaluation.reports import TABLE_FILES
    from medfuse_cli.pairs import find_pair_sets
    from medfuse_cli.pipeline import check_chroma

    check_chroma(chroma)
    metric_names = parse_metrics(metrics)
    _check_outputs(out, plot, report, bool(gallery_pairs) or gallery_metric is not None, overwrite)
    outputs = (("--out", out), ("--report", report))
    _check_apart(outputs, pairdir, f"the pair folder {pairdir}", holds=True)
    pair_sets, parent = find_pair_sets(pairdir, scoring.SPLIT)
    methods, named = choose_methods(model or [], fused or [], checkpoint, weights)
    for method in methods:
        if method.fused_dir is not None:
            _check_apart(outputs, method.fused_dir, f"--fused {method.label}={method.fused_dir}", holds=False)
    ranked_by = gallery_metric_of(gallery_metric, metric_names)
    shown_pairs = check_named_pairs(pair_sets, (n for spec in gallery_pairs or [] for n in spec.split(",")))
    plot_names = plots.plot_files([s.label for s in pair_sets], metric_names)
    # before minutes of scoring, as fuse refuses existing outputs
    if out is not None:
        plotted = [name for names in plot_names.values() for name in names] if plot else []
        refuse_existing(out, [*TABLE_FILES, *plotted], "--out", overwrite)
    if report is not None:
        check_report_folder(report, overwrite)
    torch_device = resolve_device(device)
    total = sum(len(s.pairs) for s in pair_sets) * len(methods)

    files = OutputFiles(overwrite)  # --out's; the report has its own
    created = {folder: create_folder(folder) for folder in (out, report) if folder is not None}
    try:  # a folder that cannot be written fails here, before minutes of scoring
        for folder in created:
            prepare_output_folder(folder)
        with contextlib.ExitStack() as stack:  # on leaving, the report's helper thread stops
            shown = None
            if report is not None:
                shown = stack.enter_context(ReportFolder(report, pair_sets, methods, metric_names, overwrite))
            with options.progress_bar("scoring", quiet) as progress:
                task = progress.add_task("evaluate", total=total)

                def skipped(label: str, reason: str) -> None:
                    if as_json and not quiet:  # otherwise the tables say so
                        progress.console.print(
                            single_line(f"skipped {label}: {reason}"), markup=False, soft_wrap=True
                        )

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
                    sink=shown.images if shown is not None else None,
                    on_result=shown.scored if shown is not None else lambda result: None,
                )
            if shown is not None:
                with options.progress_bar("report", quiet) as progress:
                    task = progress.add_task("report", total=len(results) + 1)
                    shown.finish(
                        results, parent, ranked_by, shown_pairs, on_step=lambda: progress.advance(task)
                    )

            if as_json:
                print(json.dumps(tables.results_json(results, parent)))
            else:
                console = options.stdout_console()
                for result in results:
                    console.print(_table(result))
                    for label, reason in result.skipped.items():
                        console.print(
                            Text(single_line(f"skipped {label}: {reason}"), style="dim"), soft_wrap=True
                        )
            if out is not None:
                written = reports.write_reports(results, parent, out, files)
                if plot:
                    written += plots.write_plots(results, out, files, plot_names)
            # Last, once everything is written: the new report moved in place of the old one,
            # --out's held-back files over the old ones (--overwrite).
            shown_files = shown.publish() if shown is not None else 0
            files.commit()
        if out is not None and not quiet:
            _stderr.print(f"wrote {len(written)} files to {out}", markup=False)
        if report is not None and not quiet:
            _stderr.print(f"wrote {shown_files} files to {report}: open {report / PAGE}", markup=False)
    except BaseException:  # outputs are whole or absent: an error or interrupt removes this run's files
        files.discard()
        raise
    finally:  # a run that wrote nothing leaves no folder it made
        for made in created.values():
            remove_if_empty(made)


def _check_apart(
    outputs: tuple[tuple[str, Path | None], ...], folder: Path, source: str, holds: bool
) -> None:
    """Refuse an output folder that is an input folder or lies inside it (and with ``holds``,
    one that holds it), before anything is read: a report written into the data becomes part
    of it, and a later run scores its images as pairs or finds folders that no longer pair up.

    Symbolic links are resolved and folders compared by identity (``os.path.samefile``), so
    another name for the same folder is caught too.

    Args:
        outputs: ``(option, folder or None)`` of each output.
        folder: The input folder (one that does not exist is left to its own check).
        source: It in the message: ``the pair folder DIR``, ``--fused LABEL=DIR``.
        holds: Refuse an output folder that holds ``folder`` as well.

    Raises:
        InputError: naming the option, both folders and how they overlap.
    """
    if not folder.is_dir():
        return
    for option, output in outputs:
        if output is None:
            continue
        if _within(output, folder):
            relation = "is" if _within(folder, output) else "lies inside"
        elif holds and _within(folder, output):
            relation = "holds"
        else:
            continue
        raise InputError(
            f"{option} {output} {relation} {source}: its files would mix with the inputs; "
            "choose a folder outside them"
        )


def _within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it, links resolved (``inner`` may not exist)."""
    outer = outer.resolve()
    for folder in (inner.resolve(), *inner.resolve().parents):
        if folder == outer:
            return True
        with contextlib.suppress(OSError):  # a folder that does not exist (yet)
            if os.path.samefile(folder, outer):
                return True
    return False


def _check_outputs(out: Path | None, plot: bool, report: Path | None, gallery: bool, overwrite: bool) -> None:
    """Refuse output options that cannot work together, before anything is read."""
    if plot and out is None:
        if report is not None:
            raise InputError(
                "--plot draws its figures beside --out's tables; --report has its own: drop --plot"
            )
        raise InputError("--plot writes files: give --out DIR as well")
    for folder, option in ((out, "--out"), (report, "--report")):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(f"{option} must be a folder: {folder}")
    if out is not None and report is not None and _within(out, report):
        if _within(report, out):
            raise InputError(
                "--out and --report name one folder; the report holds the tables too: drop --out"
            )
        raise InputError("--out lies inside the --report folder; the report holds the tables too: drop --out")
    if gallery and report is None:
        raise InputError("--gallery-pairs and --gallery-metric choose what --report shows: give --report DIR")
    if overwrite and out is None and report is None:
        raise InputError("--overwrite replaces files that --out or --report write: give one of them")


def _table(result: PairSetResult) -> Table:
    """One rich table: a row per metric (with its direction), a column per method, cells
    "mean / ± std", the best method's cell in bold green with *. Fits 80 columns for ~6 methods."""
    from medfuse_cli.evaluation.tables import arrow, count, mean_text

    table = Table(
        title=f"{result.pair_set.label} ({count(len(result.pair_set.pairs), 'pair')})",
        caption="mean ± std · ↑/↓ higher/lower is better · * best",
    )
    table.add_column("metric")
    for label in result.methods:
        table.add_column(Text(label), justify="right")
    for metric in result.metrics:
        best = result.best(metric)
        cells = []
        for label, scores in result.methods.items():
            text = mean_text(scores, metric, sep="\n")
            cells.append(
                Text(text.replace("\n", " *\n", 1), style="bold green") if best == label else Text(text)
            )
        table.add_row(f"{metric} {arrow(metric)}", *cells)
    return table
