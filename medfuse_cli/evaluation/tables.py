"""Evaluation results as text: numbers, directions, Markdown, CSV and the JSON document.

Everything a person or a program reads comes from here, so the terminal table, ``summary.md``,
the CSV files and ``--json`` agree on how a value is written and which method is best.
"""

from __future__ import annotations

import csv
import io
import math

from medfuse_cli.evaluation.scoring import MethodScores, PairSetResult
from medfuse_cli.metrics import METRICS


def format_value(value: float) -> str:
    """A score with as many decimals as its size deserves (Qcv runs to thousands).

    Args:
        value: Any float, including NaN and ±inf.

    Returns:
        2 decimals from 100 up, 3 from 10, else 4; "-" for NaN, "inf" or "-inf" for infinities.
    """
    if not math.isfinite(value):
        return "-" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    magnitude = abs(value)
    decimals = 2 if magnitude >= 100 else 3 if magnitude >= 10 else 4
    return f"{value:.{decimals}f}"


def count(n: int, noun: str) -> str:
    """``1 pair``, ``2 pairs``: a number and a noun in the form it takes."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def mean_text(scores: MethodScores, metric: str, sep: str = " ") -> str:
    """A mean and its spread as shown: ``0.8123 ± 0.0123`` (``sep`` between them); with a single
    finite score there is no spread to show: ``0.8123 (n = 1)``; with none, ``-``."""
    n = len(scores.values(metric))
    mean = format_value(scores.mean(metric))
    if n >= 2:
        return f"{mean}{sep}± {format_value(scores.std(metric))}"
    return f"{mean}{sep}(n = 1)" if n else mean


def arrow(metric: str) -> str:
    """The direction mark of a metric: ↑ where higher is better, ↓ where lower is (e.g. Qcv)."""
    return "↑" if METRICS[metric].higher_is_better else "↓"


def result_json(result: PairSetResult) -> dict:
    """One pair set's ``--json`` object: metrics, and per method n, mean, std and per-image scores.

    Args:
        result: Scores of one pair set.

    Returns:
        ``{"metrics": [...], "methods": {label: {"n", "n_finite", "mean", "std", "per_image"}}}``
        with NaN and infinities as None because JSON has neither. ``n`` counts the images
        scored, ``n_finite`` per metric those with a finite score, which its mean and std are
        over (``summary.csv``'s ``n``, the page's ``n = k of N``). A network fused here also has
        ``"checkpoints": {name: sha256}``: what its pairs were fused with (a checkpoint name or
        ``--weights PATH``) and the sha256 of that file, so a result names the exact weights.
        Methods that were not named with ``-m`` and could not run (e.g. a damaged checkpoint)
        are under ``"skipped": {label: reason}``, present only when there is one.
    """
    skipped = {"skipped": dict(result.skipped)} if result.skipped else {}
    return {
        "metrics": list(result.metrics),
        "methods": {
            label: {
                "n": len(scores.per_image),
                "n_finite": {m: len(scores.values(m)) for m in result.metrics},
                "mean": {m: _finite_or_none(scores.mean(m)) for m in result.metrics},
                "std": {m: _finite_or_none(scores.std(m)) for m in result.metrics},
                "per_image": {
                    image: {m: _finite_or_none(v) for m, v in values.items()}
                    for image, values in scores.per_image.items()
                },
            }
            | ({"checkpoints": result.checkpoints[label]} if result.checkpoints.get(label) else {})
            for label, scores in result.methods.items()
        },
    } | skipped


def results_json(results: list[PairSetResult], parent: bool) -> dict:
    """The ``--json`` document.

    Args:
        results: Scores per pair set.
        parent: Whether the pair folder was a parent of several pair sets.

    Returns:
        ``{"pairs": {label: object}}`` (see ``result_json``), one object per pair set; for a
        pair folder that is not a parent its one object's keys are also at the top, as before
        there was ``pairs`` for it.
    """
    pairs = {r.pair_set.label: result_json(r) for r in results}
    if parent:
        return {"pairs": pairs}
    return {**pairs[results[0].pair_set.label], "pairs": pairs}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or Infinity: those become null."""
    return float(value) if math.isfinite(value) else None


def markdown(results: list[PairSetResult]) -> str:
    """``summary.md``: a table per pair set, mean ± std per method and metric, the best in bold."""
    lines = [
        "# medfuse evaluate",
        "",
        "Mean ± standard deviation over images. ↑ higher is better, ↓ lower is better; **bold** is the best mean.",
    ]
    for r in results:
        lines += [
            "",
            f"## {r.pair_set.label} ({count(len(r.pair_set.pairs), 'pair')}, {r.pair_set.folder})",
            "",
        ]
        lines.append("| Method | " + " | ".join(f"{m} {arrow(m)}" for m in r.metrics) + " |")
        lines.append("|---" * (len(r.metrics) + 1) + "|")
        best = {m: r.best(m) for m in r.metrics}
        for label, scores in r.methods.items():
            cells = []
            for m in r.metrics:
                cell = mean_text(scores, m)
                cells.append(f"**{cell}**" if best[m] == label else cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [f"\nSkipped {label}: {reason}" for label, reason in r.skipped.items()]
    return "\n".join(lines) + "\n"


def per_image_csv(results: list[PairSetResult]) -> str:
    """``per_image.csv``: a row per pair set, method and image; full-precision ``repr`` values."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    writer.writerow(["pairs", "method", "image", *metrics])
    for r in results:
        for label, scores in r.methods.items():
            for image, values in scores.per_image.items():
                writer.writerow([r.pair_set.label, label, image, *(repr(values[m]) for m in metrics)])
    return text.getvalue()


def summary_csv(results: list[PairSetResult]) -> str:
    """``summary.csv``: a row per pair set, method and metric with n, mean, std and the best flag."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["pairs", "method", "metric", "higher_is_better", "n", "mean", "std", "best"])
    for r in results:
        for label, scores in r.methods.items():
            for m in r.metrics:
                writer.writerow(
                    [
                        r.pair_set.label,
                        label,
                        m,
                        METRICS[m].higher_is_better,
                        len(scores.values(m)),
                        repr(scores.mean(m)),
                        repr(scores.std(m)),
                        r.best(m) == label,
                    ]
                )
    return text.getvalue()
