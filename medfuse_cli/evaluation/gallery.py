"""What the report's gallery shows: which pairs, and which region of them magnified.

For each pair set the gallery shows the best, the median and the worst pair by one metric
(each pair scored by its mean over the methods, in the metric's direction), then the pairs the
user names (``--gallery-pairs``). Under every image of a row the same square region is shown
magnified: the window of the MRI with the most gradient energy, where edges are, chosen the
same way every time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medfuse_cli.errors import InputError
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.metrics import METRICS, resolve_metric_names
from medfuse_cli.pairs import PairSet

CROP_SIZE = 64  # pixels of the source image
MAGNIFICATION = 3  # nearest-neighbour, so each source pixel stays a visible square


@dataclass(frozen=True)
class CropBox:
    """A square region of an image: its top-left corner and side in pixels, and the size
    (height, width) of the image it was cut from."""

    top: int
    left: int
    size: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class GalleryRow:
    """One pair shown in the gallery.

    Attributes:
        image: The pair's key in the results (the MRI's file name).
        reasons: Why it is shown, in order: ``best``, ``median``, ``worst``, ``named``.
        score: Its mean over the methods of the gallery's metric (NaN when none is finite).
    """

    image: str
    reasons: tuple[str, ...]
    score: float


def gallery_metric_of(name: str | None, metrics: list[str]) -> str:
    """The metric the gallery ranks pairs by: ``--gallery-metric`` (any case), by default the
    first scored one.

    Raises:
        InputError: An unknown metric, or one that is not scored (``--metrics``).
    """
    if name is None:
        return metrics[0]
    (metric,) = resolve_metric_names([name])
    if metric not in metrics:
        raise InputError(
            f"--gallery-metric {metric} is not scored: add it to --metrics ({','.join(metrics)})"
        )
    return metric


def check_named_pairs(pair_sets: list[PairSet], names: Iterable[str]) -> set[str]:
    """The ``--gallery-pairs`` names, each checked to be a pair of some pair set.

    Args:
        pair_sets: The pair sets to be scored.
        names: Pair names: a file stem (``10018``) or the MRI's file name (``10018.png``).

    Returns:
        The names, blanks around them stripped.

    Raises:
        InputError: A name is empty (``--gallery-pairs ""``, ``a,,b``, ``a,``), or matches no
            pair (the message names it and says where pairs were looked for).
    """
    wanted = {name.strip() for name in names}
    if "" in wanted:
        raise InputError("--gallery-pairs: an empty name; give pair names (file stems) separated by commas")
    known = {key for s in pair_sets for pair in s.pairs for key in (pair.name, pair.mri.name)}
    unknown = sorted(wanted - known)
    if unknown:
        folders = ", ".join(str(s.folder) for s in pair_sets)
        raise InputError(f"--gallery-pairs: no pair named {', '.join(unknown)} in {folders}")
    return wanted


def pick_rows(result: PairSetResult, metric: str, named: set[str]) -> list[GalleryRow]:
    """The gallery's pairs for one pair set: best, median and worst by ``metric``, then the
    named ones, each once (a pair that is both best and median has both reasons).

    A pair's score is the mean of ``metric`` over the methods that have a finite value for it;
    pairs without one are not ranked (they are still shown when named). Ties are broken by the
    image name, so the choice is the same every run.

    Args:
        result: The pair set's scores.
        metric: A scored metric; its direction comes from the registry.
        named: Pair names (stems or MRI file names, see ``check_named_pairs``).

    Returns:
        The rows, ranked ones first (best, median, worst), then named ones in the pair set's order;
        empty when no method was scored.
    """
    if not result.methods:
        return []
    images = list(next(iter(result.methods.values())).per_image)
    scores = {image: _pair_score(result, image, metric) for image in images}
    sign = -1.0 if METRICS[metric].higher_is_better else 1.0
    ranked = sorted((i for i in images if math.isfinite(scores[i])), key=lambda i: (sign * scores[i], i))
    reasons: dict[str, list[str]] = {}
    if ranked:
        for reason, image in (
            ("best", ranked[0]),
            ("median", ranked[(len(ranked) - 1) // 2]),
            ("worst", ranked[-1]),
        ):
            reasons.setdefault(image, []).append(reason)
    stems = {pair.mri.name: pair.name for pair in result.pair_set.pairs}
    for image in images:
        if image in named or stems.get(image) in named:
            reasons.setdefault(image, []).append("named")
    return [GalleryRow(image, tuple(why), scores[image]) for image, why in reasons.items()]


def _pair_score(result: PairSetResult, image: str, metric: str) -> float:
    values = [s.per_image[image][metric] for s in result.methods.values()]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def crop_box(mri: np.ndarray, size: int = CROP_SIZE) -> CropBox:
    """The ``size`` x ``size`` window of the MRI with the most gradient energy.

    Gradient energy is the sum of squared differences between neighbouring pixels (across and
    down) inside the window; of equal windows the top-most, then left-most, is taken.

    Args:
        mri: (H, W) float in [0, 1] (any scale works: only the ranking matters).
        size: The window's side; an image smaller than that gives its whole smaller side.

    Returns:
        The window.
    """
    height, width = mri.shape
    side = min(size, height, width)
    image = mri.astype(np.float64)
    energy = np.zeros((height, width))
    energy[:, :-1] += np.diff(image, axis=1) ** 2
    energy[:-1, :] += np.diff(image, axis=0) ** 2
    integral = np.pad(energy.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    sums = (
        integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    )
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return CropBox(int(top), int(left), side, (height, width))


def magnify(pixels: np.ndarray, box: CropBox, factor: int = MAGNIFICATION) -> np.ndarray:
    """The region ``box`` of an image, enlarged ``factor`` times by repeating pixels.

    Args:
        pixels: (H, W) or (H, W, 3), any dtype, of the size the box was chosen on.
        box: The region.
        factor: The enlargement (nearest neighbour).

    Returns:
        (side * factor, side * factor[, 3]) of ``pixels``' dtype.
    """
    crop = pixels[box.top : box.top + box.size, box.left : box.left + box.size]
    return np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
