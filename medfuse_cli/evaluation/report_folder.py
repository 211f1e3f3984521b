"""``medfuse evaluate --report DIR``: a folder that shows the results, self-contained.

It holds ``index.html`` (``html_report``), the images it shows (``report_images``), the plots
``--plot`` draws and the tables ``--out`` writes, which the page links. While scoring goes on,
a helper thread writes the images as scoring reads and fuses them (``ReportFolder.images`` is
scoring's ``ImageSink``) and each pair set's plots once it is scored (``scored``); the gallery's
crops, the tables and the page follow once every score is known (``finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from medfuse_cli.evaluation.background import Background
from medfuse_cli.evaluation.files import OutputFiles
from medfuse_cli.evaluation.gallery import pick_rows
from medfuse_cli.evaluation.html_report import PairSetSection, ReportPage, render
from medfuse_cli.evaluation.methods import Method
from medfuse_cli.evaluation.plots import plot_names, write_plots
from medfuse_cli.evaluation.provenance import collect
from medfuse_cli.evaluation.report_images import ImageLayout, ReportImages, columns
from medfuse_cli.evaluation.reports import TABLE_FILES, write_reports
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.pairs import PairSet

PAGE = "index.html"


def report_names(pair_sets: list[PairSet], metrics: list[str]) -> list[str]:
    """What a report writes at the top of its folder (files and the image folders), for the
    check of existing files before any work (``files.refuse_existing``)."""
    plots = [name for s in pair_sets for name in plot_names(s.label, metrics)]
    return [PAGE, *TABLE_FILES, *plots, "images", "crops"]


class ReportFolder:
    """One report being made; a context manager whose exit stops its helper thread (pending
    writes are cancelled, the running one is waited for), before the run's files are kept or
    discarded.

    Args:
        folder: The report folder (it exists and can be written).
        pair_sets: The pair sets to be scored.
        methods: The methods to be scored.
        files: The run's writer (atomic files, ``--overwrite``, removal if the run fails).
    """

    def __init__(
        self, folder: Path, pair_sets: list[PairSet], methods: list[Method], files: OutputFiles
    ) -> None:
        self.folder, self.methods, self.files = folder, methods, files
        self.layout = ImageLayout(pair_sets, [m.label for m in methods])
        self.background = Background()
        self.images = ReportImages(folder, self.layout, files, self.background)
        self._plots: dict[str, Future] = {}

    def __enter__(self) -> ReportFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.background.__exit__(*exc)

    def scored(self, result: PairSetResult) -> None:
        """Queue the plots of a pair set whose scores are complete (scoring's ``on_result``).

        Raises:
            OutputError: An earlier image or plot could not be written.
        """
        self._plots[result.pair_set.label] = self.background.submit(
            write_plots, [result], self.folder, self.files
        )

    def finish(
        self,
        results: list[PairSetResult],
        parent: bool,
        gallery_metric: str,
        gallery_pairs: set[str],
        on_step: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait for the images and plots, then write the tables, the gallery's crops and the page.

        Args:
            results: The scores, each passed to ``scored`` before.
            parent: Whether the pair folder was a parent of several pair sets (shapes the JSON).
            gallery_metric: The metric the gallery's best, median and worst pairs are chosen by.
            gallery_pairs: Pairs the gallery shows as well (``gallery.check_named_pairs``).
            on_step: Called after each pair set and after the page (``len(results) + 1`` calls).

        Raises:
            OutputError: A file exists without ``--overwrite`` or cannot be written.
        """
        self.background.wait()
        write_reports(results, parent, self.folder, self.files)
        sections = []
        for result in results:
            plots = self._plots[result.pair_set.label].result()
            shown = columns(result.pair_set, result.methods)
            gallery = tuple(
                (row, self.images.write_crops(result.pair_set, row.image, shown))
                for row in pick_rows(result, gallery_metric, gallery_pairs)
            )
            sections.append(PairSetSection(result, tuple(p.name for p in plots), gallery))
            on_step()
        page = ReportPage(
            tuple(sections), gallery_metric, TABLE_FILES, collect(self.methods, results), self.layout
        )
        self.files.write_text(self.folder / PAGE, render(page))
        on_step()
