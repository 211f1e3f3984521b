"""The LWNet paper's figures for ``medfuse evaluate --plot``: box plots and a radar chart.

Box plots show every metric's per-image distribution for each method. The radar chart puts each
method's mean on one axis per metric after min-max normalisation across the compared methods
(best = 1, worst = 0, direction taken from the metric), and labels each method with its area
ratio: the area of its polygon over the area of the full polygon (all axes at 1), in percent,
as the LWNet paper reports.

Figures are matplotlib ``Figure`` objects, not pyplot's: no global state, so a report can draw
them on a helper thread while scoring goes on. matplotlib is imported only when one is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medfuse_cli.evaluation.files import OutputFiles, file_names
from medfuse_cli.evaluation.scoring import PairSetResult
from medfuse_cli.evaluation.tables import arrow
from medfuse_cli.metrics import METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def normalised_means(result: PairSetResult) -> dict[str, list[float]]:
    """Per method, each metric's mean scaled to [0, 1] across methods, 1 being the best."""
    labels = list(result.methods)
    table = np.array([[result.methods[label].mean(m) for m in result.metrics] for label in labels])
    out = np.ones_like(table)
    for j, metric in enumerate(result.metrics):
        column = table[:, j]
        finite = np.isfinite(column)
        if not finite.any():
            out[:, j] = 0.0
            continue
        lo, hi = column[finite].min(), column[finite].max()
        if hi > lo:
            scaled = (column - lo) / (hi - lo)
            out[:, j] = np.where(finite, scaled if METRICS[metric].higher_is_better else 1.0 - scaled, 0.0)
        else:
            out[:, j] = np.where(finite, 1.0, 0.0)
    return {label: out[i].tolist() for i, label in enumerate(labels)}


def area_ratio(radii: list[float]) -> float:
    """Area of the radar polygon with these radii over the area with all radii 1 (n >= 3).

    With equal angles 2 pi / n the polygon's area is (1/2) sin(2 pi / n) sum r_i r_{i+1}, so the
    ratio is sum r_i r_{i+1} / n.
    """
    n = len(radii)
    return sum(radii[i] * radii[(i + 1) % n] for i in range(n)) / n


def plot_files(labels: Iterable[str], metrics: list[str]) -> dict[str, list[str]]:
    """The files ``write_plots`` writes for each pair set: ``<pairs>_boxplots.png``, and
    ``<pairs>_radar.png`` when there are at least three metrics (a radar needs three axes).

    ``<pairs>`` is the pair set's label made a file name by ``files.file_names`` over all the
    labels at once, so two labels that reduce alike (``A_B/CT-MRI``, ``A/B_CT-MRI``) still get
    files of their own, and the report's ``images/<pairs>/`` folders carry the same names.

    Args:
        labels: Every pair set's label, in the results' order.
        metrics: The metrics scored.

    Returns:
        ``{label: [file name, ...]}``.
    """
    stems = file_names(labels)
    return {label: [f"{stem}_{kind}.png" for kind, _ in _figures(metrics)] for label, stem in stems.items()}


def write_plots(
    results: list[PairSetResult], out_dir: Path, files: OutputFiles, names: dict[str, list[str]]
) -> list[Path]:
    """Draw and write the figures of every pair set with a scored method.

    Args:
        results: Scores per pair set.
        out_dir: The folder to write into (created if missing).
        files: The run's writer (atomic PNGs, ``--overwrite``, removal if the run fails).
        names: The files of each pair set's figures: ``plot_files`` of every pair set's label
            (of the run, not only of ``results``, so names stay unique across calls).

    Returns:
        The paths written, pair set by pair set.

    Raises:
        OutputError: A file exists without ``--overwrite`` or cannot be written.
    """
    written = []
    for result in results:
        if not result.methods:
            continue
        for name, (_, draw) in zip(names[result.pair_set.label], _figures(result.metrics), strict=True):
            fig, options = draw(result)
            written.append(
                files.write(
                    out_dir / name, lambda tmp, fig=fig, o=options: fig.savefig(tmp, format="png", **o)
                )
            )
    return written


def _figures(metrics: list[str]) -> list[tuple[str, Callable]]:
    """Each figure of a pair set: what it is (its file name's end) and the function that draws it."""
    figures = [("boxplots", _boxplots)]
    if len(metrics) >= 3:
        figures.append(("radar", _radar))
    return figures


def _boxplots(result: PairSetResult) -> tuple[Figure, dict]:
    """The box plots' figure and its ``savefig`` options."""
    from matplotlib.figure import Figure

    labels = list(result.methods)
    columns = min(3, len(result.metrics))
    rows = math.ceil(len(result.metrics) / columns)
    # Constrained layout makes room for the figure's title above the subplots' titles, which
    # tight_layout does not: with many rows its title ran into the top row's.
    fig = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, metric in zip(axes.flat, result.metrics, strict=False):
        ax.boxplot([result.methods[label].values(metric) for label in labels])
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_title(f"{metric} {arrow(metric)}")
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(result.metrics) :]:
        ax.set_visible(False)
    fig.suptitle(f"{result.pair_set.label}: per-image scores")
    return fig, {"dpi": 120}


def _radar(result: PairSetResult) -> tuple[Figure, dict]:
    """The radar chart's figure and its ``savefig`` options."""
    from matplotlib.figure import Figure

    radii = normalised_means(result)
    n = len(result.metrics)
    angles = [2 * math.pi * i / n for i in range(n)]
    fig = Figure(figsize=(6.4, 6.4))
    ax = fig.add_subplot(projection="polar")
    for label, values in radii.items():
        ax.plot(
            [*angles, angles[0]],
            [*values, values[0]],
            linewidth=1.5,
            label=f"{label} ({100 * area_ratio(values):.1f}%)",
        )
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{m} {arrow(m)}" for m in result.metrics])
    ax.set_ylim(0, 1)
    ax.set_rlabel_position(180 / n)  # radial tick labels between the first two axes
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_title(f"{result.pair_set.label}: normalised means (area ratio)", pad=18)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    fig.tight_layout()
    return fig, {"dpi": 120, "bbox_inches": "tight"}
