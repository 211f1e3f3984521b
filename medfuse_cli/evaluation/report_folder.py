"""``medfuse evaluate --report DIR``: a folder that shows the results, self-contained.

It holds ``index.html`` (``html_report``), the images it shows (``report_images``), the plots
``--plot`` draws and the tables ``--out`` writes, which the page links. While scoring goes on,
a helper thread writes the images as scoring reads and fuses them (``ReportFolder.images`` is
scoring's ``ImageSink``) and each pair set's plots once it is scored (``scored``); the gallery's
crops, the tables and the page follow once every score is known (``finish``).

The report is made in a hidden work folder inside DIR and moved into place only when it is
whole (``publish``): an old report (with ``--overwrite``) is then moved aside and removed, so a
run that fails leaves it exactly as it was, and a new report keeps none of the old one's files.
Nothing is written into what was there before: a symbolic link in DIR (``images`` pointing at
data, say) is moved aside and removed as a link, never written through. Files in DIR that a
report does not write are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from medfuse_cli.errors import MedfuseError, OutputError
from medfuse_cli.evaluation.background import Background
from medfuse_cli.evaluation.files import OutputFiles
from medfuse_cli.evaluation.gallery import pick_rows
from medfuse_cli.evaluation.html_report import PairSetSection, ReportPage, render
from medfuse_cli.evaluation.methods import Method
from medfuse_cli.evaluation.plots import plot_files, write_plots
from medfuse_cli.evaluation.provenance import collect
from medfuse_cli.evaluation.report_images import ImageLayout, ReportImages, columns
from medfuse_cli.evaluation.reports import TABLE_FILES, write_reports
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.pairs import PairSet

PAGE = "index.html"
FOLDERS = ("images", "crops")
# A report's plots, of this run or of an older one (whose names were less strict).
_PLOT = re.compile(r"[^.].*_(boxplots|radar)\.png")
# The work folders of a run: "new" holds the report being made, "old" the one being replaced.
_WORK = re.compile(r"\.medfuse-report-(new|old)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def report_entries(folder: Path) -> list[str]:
    """The names of what a report writes that are in ``folder`` (of this run's report or of an
    older one): ``index.html``, the tables, the plots, ``images/`` and ``crops/``, sorted; none
    where ``folder`` does not exist."""
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.name in (PAGE, *TABLE_FILES, *FOLDERS) or _PLOT.fullmatch(entry.name)
    )


def check_report_folder(folder: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder that holds a report without ``overwrite``.

    Raises:
        OutputError: it holds some of ``report_entries`` (the message names up to two, folders
            with a trailing ``/``, counts the rest and says that ``--overwrite`` replaces them).
    """
    present = report_entries(folder)
    if present and not overwrite:
        raise OutputError(
            f"--report: {folder} already holds {_entries(folder, present)}; pass --overwrite to replace that report"
        )


class ReportFolder:
    """One report being made; a context manager whose exit stops its helper thread (pending
    writes are cancelled, the running one is waited for) and removes the work folder with what
    was not published.

    Args:
        folder: The report folder (it exists and can be written).
        pair_sets: The pair sets to be scored.
        methods: The methods to be scored.
        metrics: The metrics scored.
        overwrite: Whether a report in ``folder`` is to be replaced (``--overwrite``).

    Raises:
        OutputError: The work folder cannot be made in ``folder``.
    """

    def __init__(
        self,
        folder: Path,
        pair_sets: list[PairSet],
        methods: list[Method],
        metrics: list[str],
        overwrite: bool,
    ) -> None:
        self.folder, self.methods, self.overwrite = folder, methods, overwrite
        self.files = OutputFiles(overwrite=False)  # a new folder: every name is written once
        self.layout = ImageLayout(pair_sets, [m.label for m in methods])
        self.plot_names = plot_files([s.label for s in pair_sets], metrics)
        self.background = Background()
        _remove_stale_work(folder)
        self.work = _work_folder(folder, "new")
        self.images = ReportImages(self.work, self.layout, self.files, self.background)
        self._plots: dict[str, Future] = {}

    def __enter__(self) -> ReportFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.background.__exit__(*exc)
        shutil.rmtree(self.work, ignore_errors=True)

    def scored(self, result: PairSetResult) -> None:
        """Queue the plots of a pair set whose scores are complete (scoring's ``on_result``).

        Raises:
            OutputError: An earlier image or plot could not be written.
        """
        self._plots[result.pair_set.label] = self.background.submit(
            write_plots, [result], self.work, self.files, self.plot_names
        )

    def finish(
        self,
        results: list[PairSetResult],
        parent: bool,
        gallery_metric: str,
        gallery_pairs: set[str],
        on_step: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait for the images and plots, then write the tables, the gallery's crops and the page
        (in the work folder: ``publish`` puts them in place).

        Args:
            results: The scores, each passed to ``scored`` before.
            parent: Whether the pair folder was a parent of several pair sets (shapes the JSON).
            gallery_metric: The metric the gallery's best, median and worst pairs are chosen by.
            gallery_pairs: Pairs the gallery shows as well (``gallery.check_named_pairs``).
            on_step: Called after each pair set and after the page (``len(results) + 1`` calls).

        Raises:
            OutputError: A file cannot be written.
        """
        self.background.wait()
        write_reports(results, parent, self.work, self.files)
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
        self.files.write_text(self.work / PAGE, render(page))
        on_step()

    def publish(self) -> int:
        """Put the finished report in place: the old report's entries (``report_entries``) are
        moved aside, the new ones moved in, then the old ones removed. Renames only, within the
        folder; if one fails, every rename is undone, so the old report stays as it was.

        Returns:
            The number of files the report holds.

        Raises:
            OutputError: A report appeared meanwhile without ``overwrite``, or the folder's
                entries cannot be renamed.
        """
        old = report_entries(self.folder)
        if old and not self.overwrite:  # written by another run since the check before scoring
            raise OutputError(
                f"--report: {self.folder} now holds {_entries(self.folder, old)}; pass --overwrite to replace that report"
            )
        trash = _work_folder(self.folder, "old")
        done: list[tuple[Path, Path]] = []
        try:
            for name in old:
                done.append((self.folder / name, trash / name))
                os.rename(*done[-1])
            for entry in sorted(self.work.iterdir()):
                target = self.folder / entry.name
                if os.path.lexists(target):  # appeared meanwhile: never replaced by a rename
                    raise OutputError(f"--report: {target} appeared while the report was made")
                done.append((entry, target))
                os.rename(*done[-1])
        except BaseException as exc:
            for source, target in reversed(done):
                with contextlib.suppress(OSError):  # not moved (the failed rename) or cannot be
                    os.rename(target, source)
            with contextlib.suppress(OSError):  # empty unless an old entry could not come back
                trash.rmdir()
            if isinstance(exc, OSError) and not isinstance(exc, MedfuseError):
                raise OutputError(
                    f"cannot replace the report in {self.folder}: {exc.strerror or exc}"
                ) from None
            raise
        shutil.rmtree(trash, ignore_errors=True)  # links in it are removed, never followed
        return len(self.files.written)


def _entries(folder: Path, names: list[str]) -> str:
    """``a report's index.html, images/ and 7 more``: up to two names, folders marked with /."""
    shown = [f"{n}/" if (folder / n).is_dir() and not (folder / n).is_symlink() else n for n in names]
    more = len(names) - 2
    if more > 0:
        return f"a report's {', '.join(shown[:2])} and {more} more"
    return "a report's " + " and ".join(shown)


def _work_folder(folder: Path, kind: str) -> Path:
    """A new hidden folder in ``folder`` named for this process (``_WORK``)."""
    work = folder / f".medfuse-report-{kind}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        work.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return work


def _remove_stale_work(folder: Path) -> None:
    """Remove the work folders of runs that were killed (their process is gone)."""
    for entry in os.scandir(folder):
        match = _WORK.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and _process_is_gone(int(match["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)


def _process_is_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists on this machine (POSIX; elsewhere never)."""
    if os.name != "posix":  # os.kill(pid, 0) does not ask there, it terminates
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be
        pass
    return False
