"""The images of a ``--report`` folder: where each lives, and writing them.

Every pair's MRI and second image and every method's fused image are written as 8-bit PNGs
while scoring reads or fuses them (``ReportImages`` is the scoring's ``ImageSink``; the files
are encoded and written on a helper thread, ``background.Background``), so nothing is fused
twice and no more than a few images are held in memory. The gallery's magnified crops are cut
afterwards from the files written, so they show exactly what the page shows::

    images/<pairs>/MRI/<pair>.png              the MRI, as scored (after its window)
    images/<pairs>/<SPECT|PET|CT>/<pair>.png   the second image as fused (RGB for PET/SPECT)
    images/<pairs>/fused/<method>/<pair>.png   each method's fused image
    crops/...                                  the same layout, for the gallery's pairs

Folder and file names are the labels and stems reduced to letters, digits, ``-`` and ``_``
(made unique where two reduce alike: ``files.file_names``, which names the plots too), so any
label is a safe relative link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfuse_cli.evaluation.background import Background
from medfuse_cli.evaluation.files import OutputFiles, file_names
from medfuse_cli.evaluation.gallery import CropBox, crop_box, magnify
from medfuse_cli.io import read_image
from medfuse_cli.pairs import ANATOMICAL, PairSet


@dataclass(frozen=True)
class Column:
    """One image of a pair in the report: a source (``MRI``, ``SPECT``, ``PET``, ``CT``) or, with
    ``method``, the fused image of the method labelled ``title``."""

    title: str
    method: bool = False


def _second_modality(pair_set: PairSet) -> str:
    """The second image's modality of a pair set: ``SPECT`` for ``SPECT-MRI``."""
    return pair_set.kind.split("-")[0]


def columns(pair_set: PairSet, methods: Iterable[str]) -> list[Column]:
    """A pair's images in the order the report shows them: MRI, second image, each method's."""
    return [
        Column(ANATOMICAL),
        Column(_second_modality(pair_set)),
        *(Column(m, method=True) for m in methods),
    ]


class ImageLayout:
    """Where a report keeps each image, as a relative POSIX path (see the module docstring).

    Args:
        pair_sets: The pair sets scored.
        methods: Every method's label.
    """

    def __init__(self, pair_sets: list[PairSet], methods: list[str]) -> None:
        self._sets = file_names(s.label for s in pair_sets)
        self._methods = file_names(methods)
        self._images = {s.label: file_names(pair.name for pair in s.pairs) for s in pair_sets}
        self._stems = {s.label: {pair.mri.name: pair.name for pair in s.pairs} for s in pair_sets}

    def path(self, pair_set: PairSet, image: str, column: Column, crop: bool = False) -> str:
        """The image ``column`` of the pair whose MRI file is named ``image``, or its crop."""
        where = f"fused/{self._methods[column.title]}" if column.method else column.title
        stem = self._images[pair_set.label][self._stems[pair_set.label][image]]
        return f"{'crops' if crop else 'images'}/{self._sets[pair_set.label]}/{where}/{stem}.png"


class ReportImages:
    """Writes a report's images: an ``ImageSink`` for scoring, and the gallery's crops.

    Args:
        folder: The report folder.
        layout: Where each image goes.
        files: The run's writer (atomic PNGs, ``--overwrite``, removal if the run fails).
        background: The helper thread the images scoring hands over are written on; a write
            that failed (``OutputError``) is raised at a later image or at ``background.wait``.
    """

    def __init__(self, folder: Path, layout: ImageLayout, files: OutputFiles, background: Background) -> None:
        self.folder, self.layout, self.files, self.background = folder, layout, files, background

    def sources(self, pair_set: PairSet, image: str, mri: np.ndarray, second: np.ndarray) -> None:
        """Queue a pair's MRI and second image to be written."""
        mri_column, second_column = columns(pair_set, ())
        self.background.submit(self.files.write_png, self._file(pair_set, image, mri_column), mri)
        self.background.submit(self.files.write_png, self._file(pair_set, image, second_column), second)

    def fused(self, pair_set: PairSet, method: str, image: str, pixels: np.ndarray) -> None:
        """Queue one method's fused image to be written."""
        path = self._file(pair_set, image, Column(method, method=True))
        self.background.submit(self.files.write_png, path, pixels)

    def write_crops(self, pair_set: PairSet, image: str, shown: list[Column]) -> CropBox:
        """Cut the same region out of each of a pair's images (written, ``background.wait``),
        magnified (``gallery.magnify``), and write it to the crop's path.

        Args:
            pair_set, image: The pair (``image`` is its MRI's file name).
            shown: Its columns (``columns``), the MRI first: the region is chosen on it.

        Returns:
            The region (``gallery.crop_box`` of the MRI).

        Raises:
            OutputError: A crop cannot be written or exists without ``--overwrite``.
        """
        images = [(column, read_image(self._file(pair_set, image, column)).pixels) for column in shown]
        box = crop_box(images[0][1])
        for column, pixels in images:
            self.files.write_png(self._file(pair_set, image, column, crop=True), magnify(pixels, box))
        return box

    def _file(self, pair_set: PairSet, image: str, column: Column, crop: bool = False) -> Path:
        return self.folder / self.layout.path(pair_set, image, column, crop)
