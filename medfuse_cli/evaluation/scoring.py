"""Score fusion methods on pair sets, image by image.

A method is a registered fuser (run here) or a folder of images another tool fused (found by
``medfuse_cli.pairs.find_fused``). Every metric sees 8-bit planes on 0..255:

- A: the MRI, B: the Y of the functional image (BT.601 full range from ``medfuse_cli.color``,
  rounded to the nearest level) or the CT;
- F: the Y of the fused image *as its 8-bit file holds it*. For a fuser run here the fused Y
  is put back together with the functional chroma and quantised exactly as ``medfuse fuse``
  writes it, so ``--model X`` and ``--fused X=<folder medfuse fuse wrote>`` give the same numbers.

Our Y rounds to the nearest level; PIL's ``convert('YCbCr')``, which the metric reference anchors
use, truncates, so on coloured pixels our B and F are often one level above PIL's (never more).
Both the sources and every method's output go through the same conversion, so comparisons
between methods are unaffected.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from medfuse_cli.color import split_luma
from medfuse_cli.errors import InputError, MedfuseError
from medfuse_cli.evaluation.methods import Method
from medfuse_cli.io import DEFAULT_MAX_PIXELS, read_image, to_integer
from medfuse_cli.metrics import METRICS, compute_metrics
from medfuse_cli.pairs import PairSet, Split, find_fused
from medfuse_cli.pipeline import Fusion, Pair, compose, load_pair

# Reported numbers come from the test split: pair sets and other tools' images are read from it.
SPLIT: Split = "test"
FUSE_BATCH = 8


@dataclass
class MethodScores:
    """Per-image scores of one method on one pair set, keyed by the MRI's file name."""

    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def values(self, metric: str) -> np.ndarray:
        """The finite scores of one metric (NaN/inf, e.g. PSNR of a perfect copy, are left out)."""
        v = np.array([scores[metric] for scores in self.per_image.values()], dtype=np.float64)
        return v[np.isfinite(v)]

    def mean(self, metric: str) -> float:
        v = self.values(metric)
        return float(v.mean()) if v.size else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over images (N - 1, as MATLAB's ``std``); 0 for one image."""
        v = self.values(metric)
        return float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else math.nan)


@dataclass
class PairSetResult:
    """All methods' scores on one pair set, plus the methods that could not run and why.

    ``checkpoints`` holds, per network run here, what its pairs were fused with: the name
    ``Fusion.checkpoint_for`` gives (a checkpoint name or ``--weights PATH``) -> the sha256 of
    that file (``Fusion.checkpoint_sha256``); empty for a classical rule.
    """

    pair_set: PairSet
    metrics: list[str]
    methods: dict[str, MethodScores] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def best(self, metric: str) -> str | None:
        """The method with the best mean for ``metric`` (direction from the registry); None
        unless at least two methods have a mean to compare."""
        means = {label: s.mean(metric) for label, s in self.methods.items() if math.isfinite(s.mean(metric))}
        if len(means) < 2:
            return None
        pick = max if METRICS[metric].higher_is_better else min
        return pick(means, key=means.__getitem__)


def luma8(pixels: np.ndarray) -> np.ndarray:
    """The Y plane metrics see, as an 8-bit file of the image would hold it.

    Args:
        pixels: An image in [0, 1], (H, W) gray or (H, W, 3) RGB, any float dtype.

    Returns:
        (H, W) float64 integer levels on 0..255: the image quantised to 8 bits first, then its
        BT.601 Y rounded to the nearest level.
    """
    quantised = to_integer(pixels, 8).astype(np.float32) / 255.0
    y, _ = split_luma(quantised)
    return np.rint(y.astype(np.float64) * 255.0)


class ImageSink(Protocol):
    """Receives the images scoring sees, as they are read or fused (``--report`` writes them).

    ``image`` is the pair's key in the results (the MRI's file name); pixels are float in
    [0, 1], (H, W) gray or (H, W, 3) RGB, all of one pair the same size.
    """

    def sources(self, pair_set: PairSet, image: str, mri: np.ndarray, second: np.ndarray) -> None:
        """The MRI (gray) and the second image as fused: RGB for a PET/SPECT, gray for a CT."""

    def fused(self, pair_set: PairSet, method: str, image: str, pixels: np.ndarray) -> None:
        """One method's fused image, as its 8-bit file holds it or would hold it."""


@dataclass(frozen=True)
class _Sources:
    pair: Pair
    a: np.ndarray  # MRI, 0..255
    b: np.ndarray  # functional Y or CT, 0..255
    file_name: str


def _load_sources(
    pair_set: PairSet, resize: bool, chroma: str, max_pixels: int, sink: ImageSink | None
) -> list[_Sources]:
    sources = []
    for files in pair_set.pairs:
        pair = load_pair(files.name, files.mri, files.second, resize, chroma, max_pixels)
        a = np.rint(pair.anatomical_y.astype(np.float64) * 255.0)
        b = np.rint(pair.functional_y.astype(np.float64) * 255.0)
        sources.append(_Sources(pair, a, b, files.mri.name))
        if sink is not None:
            sink.sources(pair_set, files.mri.name, pair.anatomical_y, compose(pair, pair.functional_y))
    return sources


# Where a method's fused images go besides scoring: (image, pixels) -> None.
_Keep = Callable[[str, np.ndarray], None]


def _ignore(image: str, pixels: np.ndarray) -> None:
    """The ``_Keep`` of a run without an ``ImageSink``."""


def _read_fused(
    method: Method, pair_set: PairSet, sources: list[_Sources], max_pixels: int, keep: _Keep
) -> list[np.ndarray]:
    try:
        paths = find_fused(method.fused_dir, pair_set, SPLIT)
    except MedfuseError as exc:
        raise InputError(f"--fused {method.label}: {exc}") from None
    planes = []
    for s, path in zip(sources, paths, strict=True):
        image = read_image(path, max_pixels=max_pixels)
        if image.pixels.shape[:2] != s.a.shape:
            raise InputError(
                f"--fused {method.label}: {image.path} is {image.size[0]}x{image.size[1]}, "
                f"its sources are {s.a.shape[1]}x{s.a.shape[0]}"
            )
        planes.append(luma8(image.pixels))
        keep(s.file_name, image.pixels)
    return planes


def _fuse(fusion: Fusion, sources: list[_Sources], keep: _Keep) -> list[np.ndarray]:
    """Fused Y planes (0..255) of every pair; a pair the fuser refuses stops the method (its
    error names why), since a method's mean over some of the pairs would not compare."""
    planes = []
    for start in range(0, len(sources), FUSE_BATCH):
        batch = sources[start : start + FUSE_BATCH]
        for source, fused in zip(batch, fusion.fuse_pairs([s.pair for s in batch]), strict=True):
            if isinstance(fused, MedfuseError):
                raise fused
            pixels = compose(source.pair, fused)
            planes.append(luma8(pixels))
            keep(source.file_name, pixels)
    return planes


def evaluate(
    pair_sets: list[PairSet],
    methods: list[Method],
    metrics: list[str],
    device: torch.device,
    resize: bool = False,
    chroma: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int | None = None,
    methods_named: bool = True,
    on_progress: Callable[[int], None] = lambda images: None,
    on_skip: Callable[[str, str], None] = lambda label, reason: None,
    workers: int | None = None,
    sink: ImageSink | None = None,
    on_result: Callable[[PairSetResult], None] = lambda result: None,
) -> list[PairSetResult]:
    """Score every method on every pair set.

    A fuser that cannot run (e.g. a network whose checkpoint is unavailable) is an error when
    the user named it, and is skipped, with ``on_skip(label, reason)``, when it was only part
    of the default line-up. Metrics run on worker threads (numpy releases the GIL); the
    FMI family dominates the cost at a few tenths of a second per image and variant.

    Args:
        pair_sets: The pair sets to score on (see ``medfuse_cli.pairs.find_pair_sets``).
        methods: Fusers to run and folders to read (see ``methods.choose_methods``).
        metrics: Registered metric names.
        device: Where the fusers run.
        resize: Resize each pair's second image to the MRI's size (bicubic), as
            ``medfuse fuse --resize`` does; otherwise pairs of different sizes are an error.
        chroma: How the second images' colour is read (``auto``, ``keep``, ``drop``), as in fuse.
        max_pixels: The decompression-bomb limit of every image read (``--max-pixels``).
        threads: torch CPU threads while fusing (default: each fuser's measured choice).
        methods_named: Whether the user named the methods (a failing one is then an error).
        on_progress: Called with n after n more images are scored (or skipped).
        on_skip: Called with "<method> on <pair set>" and the reason a method was skipped.
        workers: Metric threads; by default up to 4, one per CPU.
        sink: Receives every pair's sources and every method's fused images (``ImageSink``).
        on_result: Called with each pair set's result as soon as it is complete.

    Returns:
        One result per pair set, in order, with per-image scores keyed by the MRI's file name.

    Raises:
        MedfuseError: A pair cannot be read or its sizes differ without ``resize``; another
            tool's images are missing, ambiguous or of the wrong size; a named fuser cannot run.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    fusions: dict[str, Fusion] = {}
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for pair_set in pair_sets:
            sources = _load_sources(pair_set, resize, chroma, max_pixels, sink)
            result = PairSetResult(pair_set, list(metrics))
            for method in methods:
                keep = _ignore if sink is None else functools.partial(sink.fused, pair_set, method.label)
                try:
                    planes = _method_planes(
                        method, pair_set, sources, fusions, device, threads, max_pixels, keep
                    )
                except MedfuseError as exc:
                    if methods_named or method.model is None:
                        raise
                    result.skipped[method.label] = str(exc)
                    on_skip(f"{method.label} on {pair_set.label}", str(exc))
                    on_progress(len(sources))
                    continue

                def score(job: tuple[_Sources, np.ndarray]) -> dict[str, float]:
                    src, f = job
                    values = compute_metrics(src.a, src.b, f, metrics)
                    on_progress(1)
                    return values

                scores = MethodScores()
                for src, values in zip(
                    sources, pool.map(score, zip(sources, planes, strict=True)), strict=True
                ):
                    scores.per_image[src.file_name] = values
                result.methods[method.label] = scores
                if method.label in fusions:
                    fusion = fusions[method.label]
                    used = {
                        (fusion.checkpoint_for(k), fusion.checkpoint_sha256(k))
                        for k in {s.pair.kind for s in sources}
                    }
                    result.checkpoints[method.label] = dict(sorted(u for u in used if u[0] is not None))
            results.append(result)
            on_result(result)
    return results


def _method_planes(
    method: Method,
    pair_set: PairSet,
    sources: list[_Sources],
    fusions: dict[str, Fusion],
    device: torch.device,
    threads: int | None,
    max_pixels: int,
    keep: _Keep,
) -> list[np.ndarray]:
    """The fused Y planes (0..255) of one method on one pair set: fused here, or read; each
    fused image is also handed to ``keep``."""
    if method.model is None:
        return _read_fused(method, pair_set, sources, max_pixels, keep)
    if method.label not in fusions:
        fusions[method.label] = Fusion(method.model, device, method.checkpoint, method.weights, threads)
    return _fuse(fusions[method.label], sources, keep)
